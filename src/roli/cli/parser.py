"""The `roli` command line's parser: one function per verb (`_add_run`, `_add_eval`, ...), and argparse types that
refuse impossible counts. The verbs' handlers are in roli.cli.main (by the verb's name)."""

from __future__ import annotations

import argparse

from roli.version import __version__

DESCRIPTION = ("`roli run | eval | list | config | sweep | tune | report | export | interpolate`: thin wrappers over the Python API. "
               "See README.md.")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a limit, step or process count of 0 or below cannot work)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _add_run(sub) -> None:
    """`roli run`: its arguments."""
    r = sub.add_parser("run", help="train (RanLI, or both RoLI stages) and test one or more recipes")
    r.add_argument("recipes", nargs="*", help="recipe YAML files")
    r.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.epochs=3")
    r.add_argument("--out", default="runs", help="output root; each run gets a new folder inside (default runs/)")
    r.add_argument("--resume", metavar="DIR", help="continue an interrupted run folder")
    r.add_argument("--name", help="the run folder's name (one recipe only; default: run.name or the recipe's name)")


def _add_eval(sub) -> None:
    """`roli eval`: its arguments."""
    e = sub.add_parser("eval", help="evaluate a roli checkpoint (rebuilt without its recipe)")
    e.add_argument("--checkpoint", required=True, help="best.pt of a run")
    e.add_argument("--backbone", metavar="PATH", help="the backbone weights file of a lean best.pt, if it has moved "
                                                      "(its SHA-256 must match the one recorded)")
    e.add_argument("--data", help="dataset name (default: the run's)")
    e.add_argument("--data-root", help="dataset folder (default: the run's)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--attack", default=None, help="attack name (default: the run's validation attack)")
    e.add_argument("--eps", default=None, help="threat model eps (default: the run's threat.eps), e.g. 8/255")
    e.add_argument("--norm", default=None, choices=["linf", "l2"], help="threat model norm (default: the run's)")
    e.add_argument("--steps", type=positive_int, default=None, help="PGD steps")
    e.add_argument("--step-size", default=None, help="PGD step size, e.g. 2/255")
    e.add_argument("--limit", type=positive_int, default=None, help="a seeded, class-balanced subset of N examples")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = CUDA when present (default), else CPU")
    e.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast of PGD/FGSM and the clean pass (default fp32, whatever the run trained in; bf16 "
                        "needs a GPU or a CPU with AVX-512 BF16/AMX, else falls back to fp32; fp16 needs CUDA)")
    e.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="attack every example for every step (the plain loop; the same accuracy, slower). Default: "
                        "PGD/FGSM stop attacking an example once it is misclassified")
    e.add_argument("--suite", choices=["quick", "full", "aa", "sweep"], default=None,
                   help="quick: clean + PGD-10; full: clean + FGSM + PGD-10 + AutoAttack (standard), plus the eps "
                        "sweep and PGD-100x5 for the gradient-masking (integrity) flags; aa: full without the sweep "
                        "and the flags; sweep: PGD over eps x (0, 1/4, 1/2, 1, 2) and a large eps. Default: clean + "
                        "the run's validation attack")
    e.add_argument("--aa", nargs="+", default=[], metavar="KEY=VALUE",
                   help="AutoAttack settings, e.g. version=custom attacks=[apgd-ce,apgd-t] n_iter=50")
    e.add_argument("--aa-state", default=None, help="AutoAttack resume file (default: beside the checkpoint)")
    e.add_argument("--output", help="JSON file (default: eval-<data>-<split>[-<suite>].json beside the checkpoint)")


def _add_list(sub) -> None:
    """`roli list`: its arguments."""
    sub.add_parser("list", help="registered backbones, datasets, methods and attacks")


def _add_config(sub) -> None:
    """`roli config`: its arguments."""
    c = sub.add_parser("config", help="every recipe field with its type, default and help (no need to read config.py)")
    c.add_argument("section", nargs="?", help="one section: backbone, data, threat, attack, eval, transfer, train, "
                   "stage1, run, or one method/attack, e.g. transfer.lora, attack.autoattack (default: all)")


def _add_sweep(sub) -> None:
    """`roli sweep`: its arguments."""
    sw = sub.add_parser("sweep", help="run a grid of recipes (skips complete cells, resumes partial ones)")
    sw.add_argument("grid", help="grid YAML, e.g. recipes/paper/grid.yaml")
    sw.add_argument("--shard", default="1/1", metavar="I/N", help="run only the I-th of N slices (numbered from 1)")
    sw.add_argument("--seeds", metavar="S,S", help="only the cells of these seeds of the grid (e.g. 0: a first "
                    "look at every cell before the other seeds), sharded among themselves")
    sw.add_argument("--dry-run", action="store_true", help="print the cells and estimated GPU-hours; run nothing")
    sw.add_argument("--out", help="output root (default: the grid's `out:`)")
    sw.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every cell")
    sw.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                    help="run each cell under torchrun with N processes (one per GPU); default 1 = in this process")
    sw.add_argument("--stop-after", type=positive_float, metavar="MINUTES",
                    help="start no new cell after this many minutes (the running one finishes); run again to go on")


def _add_tune(sub) -> None:
    """`roli tune`: its arguments."""
    t = sub.add_parser("tune", help="choose train.lr on validation robust accuracy (successive halving; resumable)")
    t.add_argument("recipe")
    t.add_argument("--lr", required=True, help="candidate learning rates, e.g. 1e-4,3e-4,1e-3")
    t.add_argument("--epochs", type=positive_int, default=1, help="epochs of the first round; doubled every round (default 1)")
    t.add_argument("--out", help="folder for the trials (several recipes may share one; default runs/tune/<recipe>)")
    t.add_argument("--record", help="folder for <recipe>.tuned.yaml, .tune.json and .tune.md (default: --out)")
    t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every trial")


def _add_report(sub) -> None:
    """`roli report`: its arguments."""
    rep = sub.add_parser("report", help="collect results.json of runs into report.md, CSV and plots")
    rep.add_argument("dirs", nargs="+")
    rep.add_argument("--out", help="folder for the report (default: the first DIR)")
    rep.add_argument("--findings", metavar="SPEC", help="test the paper's findings on the runs (a YAML spec, e.g. "
                     "recipes/study/findings.yaml): findings.json and a findings section in the report")
    rep.add_argument("--archive", metavar="DIR", help="first copy each complete run's results.json, config, "
                     "metrics and eval JSONs (no checkpoints) to DIR/<run>/ and report from the copies (e.g. "
                     "docs/results/runs, to commit)")
    rep.add_argument("--doc", metavar="PATH", help="also write report.md to PATH with figure links relative to it "
                     "(e.g. docs/results.md)")


def _add_export(sub) -> None:
    """`roli export`: its arguments."""
    x = sub.add_parser("export", help="save a run's best weights as a standalone file others can load (+ OUT.json)")
    x.add_argument("run_dir")
    x.add_argument("output")
    x.add_argument("--format", choices=["roli", "timm", "safetensors", "peft"], default="roli",
                   help="roli: roli's checkpoint (default); timm: timm's state dict, LoRA merged, for "
                        "timm.create_model(arch, num_classes=C, checkpoint_path=OUT); safetensors: the whole model; "
                        "peft (LoRA runs): a folder OUT for peft.PeftModel.from_pretrained(timm_net, OUT)")
    x.add_argument("--backbone", metavar="PATH", help="the backbone weights file of a lean best.pt, if it has moved "
                                                      "(its SHA-256 must match the one recorded)")


def _add_interpolate(sub) -> None:
    """`roli interpolate`: its arguments."""
    i = sub.add_parser("interpolate", help="WiSE-FT curve of a run: (1-a)*start + a*finetuned weights, clean and "
                       "PGD on validation per alpha, alpha chosen on validation robust accuracy, test at it")
    i.add_argument("run_dir", help="a completed run's folder")
    i.add_argument("--alphas", default=None, metavar="A,A", help="alphas in [0, 1], e.g. 0,0.25,0.5,0.75,1 "
                   "(default 0,0.1,...,1; 0 and 1 are always measured)")
    i.add_argument("--split", default="val", choices=["val", "train"],
                   help="the split alpha is chosen on (default val; never test)")
    i.add_argument("--out", help="folder for curve.csv, curve.json, curve.png; must not exist or be empty (default: "
                   "RUN/interpolate, or RUN/interpolate-N if that exists)")
    i.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = CUDA when present (default), else CPU")


# One parser function per verb, in --help order.
VERBS = (_add_run, _add_eval, _add_list, _add_config, _add_sweep, _add_tune, _add_report, _add_export,
         _add_interpolate)


def build_parser() -> argparse.ArgumentParser:
    """The `roli` argument parser: global flags, then each verb's sub-parser (see VERBS)."""
    p = argparse.ArgumentParser(prog="roli", description=DESCRIPTION)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"roli {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in VERBS:
        add(sub)
    return p
