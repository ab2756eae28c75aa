"""`roli run | eval | list | config | sweep | tune | report | export`: thin wrappers over the Python API.

One handler (`_run`, `_eval`, ...) and one parser function (`_add_run`, ...) per verb.

Example:
    roli run recipes/tiny/mnist_lora_roli.yaml --set train.epochs=2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from roli.errors import UsageError
from roli.numbers import eps_str, number_str
from roli.version import __version__

log = logging.getLogger("roli")


def _recipes_after_set(a: argparse.Namespace) -> None:
    """`roli run --set train.epochs=3 recipe.yaml`: argparse hands the recipe to --set; give it back."""
    moved = [s for s in a.set if "=" not in s and s.endswith((".yaml", ".yml"))]
    a.set = [s for s in a.set if s not in moved]
    a.recipes = [*a.recipes, *moved]


def _run(a: argparse.Namespace) -> int:
    from roli.config import load_config
    from roli.report.write import write_report
    from roli.training.pipeline import run

    _recipes_after_set(a)
    if a.resume:
        if a.recipes:
            raise UsageError("give either recipes or --resume DIR, not both")
        if not (Path(a.resume) / "config.yaml").is_file():
            from roli.errors import RunDirError
            raise RunDirError(f"--resume {a.resume}: not a roli run folder (no config.yaml); pass the folder of the "
                              "run (for a RoLI run: its stage-2 folder)")
        cfg = load_config(Path(a.resume) / "config.yaml", a.set)
        results = [run(cfg, resume=a.resume)]
        out = Path(a.resume).parent
    else:
        if not a.recipes:
            raise UsageError("give at least one recipe (e.g. recipes/tiny/mnist_full_roli.yaml)")
        configs = [(r, load_config(r, a.set)) for r in a.recipes]  # validate every recipe before training any
        out = Path(a.out)
        if a.name is not None and len(configs) > 1:
            raise UsageError("--name takes one recipe")
        from roli.training.rundir import check_name

        names = [check_name(a.name, "--name") if a.name is not None else
                 check_name(cfg.run.name or Path(r).stem, f"{r}: run.name") for r, cfg in configs]  # before any run
        results = [run(cfg, out=out, recipe=r, name=n) for (r, cfg), n in zip(configs, names)]
    from roli.distributed import world

    if not world().is_main:  # under torchrun: rank 0 reports
        return 0
    report = write_report(out, [Path(r["run_dir"]) for r in results])
    print(report.read_text())
    print(f"report: {report}")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from roli.config import ConfigError, parse_overrides, parse_scalar
    from roli.evaluation.checkpoint import eval_path, evaluate_checkpoint
    from roli.files import atomic_write_text

    number = (lambda v: None if v is None else parse_scalar(v, "--eps/--step-size"))  # "8/255" stays a fraction
    if a.output and Path(a.output).exists():  # checked before evaluating: an earlier result is never overwritten
        from roli.errors import OutputExists
        raise OutputExists(f"--output {a.output} exists; roli does not overwrite results. Choose another file")
    if (a.aa or a.aa_state) and a.suite != "full" and a.attack != "autoattack":
        raise ConfigError("--aa and --aa-state apply to AutoAttack: use them with --suite full or --attack autoattack")
    result = evaluate_checkpoint(a.checkpoint, data=a.data, split=a.split, attack=a.attack, eps=number(a.eps),
                                 norm=a.norm, steps=a.steps, step_size=number(a.step_size), limit=a.limit,
                                 data_root=a.data_root, suite=a.suite, aa=parse_overrides(a.aa), aa_state=a.aa_state,
                                 device=a.device, backbone=a.backbone, precision=a.precision,
                                 early_stop=a.early_stop)
    from roli.distributed import world

    if not world().is_main:  # under torchrun: rank 0 reports for all
        return 0
    text = json.dumps(result, indent=2)
    print(text)
    print(summary_line(result), file=sys.stderr)  # stdout stays pure JSON (pipe it to jq)
    out = Path(a.output) if a.output else eval_path(a.checkpoint, result["data"]["name"], a.split, a.suite)
    if out.exists() and not a.output:
        out = out.with_name(f"{out.stem}-{result['started'].replace(':', '')}.json")
    atomic_write_text(out, text)
    log.info("wrote %s", out)
    return 0


def summary_line(result: dict) -> str:
    """One line a person reads after the JSON: what was attacked, how, and the accuracies."""
    threat = result.get("threat") or {}
    accs = ", ".join(f"{name} {r['acc']:.2f}%" for name, r in result["results"].items())
    data = result["data"]
    return (f"{Path(result['checkpoint']).name} on {data['name']} {data['split']} (n={data.get(data['split'] + '_size', '?')}),"
            f" {threat.get('norm', '?')} eps {eps_str(threat['eps']) if 'eps' in threat else '?'}: {accs}"
            f" [{result.get('device', '?')}, {result.get('seconds', 0):.0f} s]")


def _fields(cls) -> str:
    """A config class's fields in one line for `roli list` (`roli config` lists them with their help)."""
    from roli.cli.fields import EPS_FIELDS, type_name

    hints = typing.get_type_hints(cls)

    def shown(name: str, v) -> str:  # a budget as 8/255 (not 0.03137...); any other number as itself (16, not 16.0)
        return eps_str(v) if name in EPS_FIELDS and isinstance(v, float) else number_str(v)

    return ", ".join(f"{f.name}: {type_name(hints[f.name])} = {shown(f.name, f.default)}"
                     for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING and f.name != "name")


def _list(a: argparse.Namespace) -> int:
    from roli.attacks import ATTACKS
    from roli.backbones import BACKBONES
    from roli.backbones.convert import CONVERTERS
    from roli.backbones.known import known_checkpoints
    from roli.config import ThreatConfig
    from roli.data import DATASETS
    from roli.transfer import TRANSFER

    print("backbones:", ", ".join(BACKBONES.names()), "+ any timm architecture (weights from a local file)")
    print("known checkpoints (backbone.name; pass the file as backbone.checkpoint):")
    for name, k in known_checkpoints().items():
        eps = f"robust eps {eps_str(k.pretrain_eps)}" if k.pretrain_eps else "standard training"
        print(f"  {name}: {k.arch}, format {k.format}, {eps}; from {k.source}")
    print("checkpoint formats (backbone.format):", ", ".join(["auto", *CONVERTERS.names()]))
    print("datasets: ", ", ".join(DATASETS.names()), "(data.root: the dataset's folder; see README)")
    print("transfer methods:")
    for name in TRANSFER.names():
        print(f"  {name}: {_fields(TRANSFER.get(name).config_cls)}")
    print(f"threat: {_fields(ThreatConfig)}  (one section: training, validation, test and `roli eval`)")
    print("attacks (* = can train):")
    for name in ATTACKS.names():
        cls = ATTACKS.get(name).config_cls
        print(f"  {name}{'*' if cls.trainable else ''}: {_fields(cls) or '-'}")
    return 0


def _config(a: argparse.Namespace) -> int:
    """Print every recipe field (of one section) with its type, default and help."""
    from roli.cli.fields import render

    print(render(a.section), end="")  # an unknown section: ConfigError, one line
    return 0


def _sweep(a: argparse.Namespace) -> int:
    from roli.report.write import write_report
    from roli.sweep.run import describe, finished_dirs, plan, run_sweep

    seeds = None
    if a.seeds:
        try:
            seeds = [int(v) for v in a.seeds.split(",")]
        except ValueError:
            raise UsageError(f"--seeds takes integers separated by commas (e.g. 0,1), not {a.seeds!r}") from None
    p = plan(a.grid, shard=a.shard, out=a.out, overrides=a.set, seeds=seeds)  # validates every cell's recipe first
    print(describe(p))
    if a.dry_run:
        return 0
    outcome = run_sweep(p, nproc=a.nproc, stop_after=None if a.stop_after is None else a.stop_after * 60)
    report = write_report(p.out, finished_dirs(p))
    print(f"sweep shard {p.shard[0]}/{p.shard[1]}: {len(outcome['ran'])} ran, {len(outcome['complete'])} already "
          f"complete, {len(outcome['failed'])} failed now, {len(outcome['skipped_failed'])} failed before, "
          f"{len(outcome['not_started'])} not started (--stop-after); "
          f"report: {report}")
    for line in outcome["failed"]:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if outcome["failed"] else 0


def _tune(a: argparse.Namespace) -> int:
    from roli.sweep.tune import parse_lrs, tune

    out = Path(a.out or f"runs/tune/{Path(a.recipe).stem}")
    result = tune(a.recipe, parse_lrs(a.lr), out, epochs=a.epochs, overrides=a.set, record=a.record)
    print((Path(a.record or out) / f"{Path(a.recipe).stem}.tune.md").read_text())
    print(f"chosen lr {result['chosen']['lr']:g} -> {result['tuned_recipe']}")
    return 0


def _report(a: argparse.Namespace) -> int:
    from roli.report.write import write_report

    spec = None
    if a.findings:
        from roli.report.spec import load_spec

        spec = load_spec(a.findings)  # a bad spec fails before any run is read
    dirs = [p.parent for d in a.dirs for p in sorted(Path(d).glob("**/results.json"))]
    if not dirs:
        raise UsageError(f"no results.json under {a.dirs}; give the folders of finished runs (or their --out)")
    if a.archive:  # the report is made from the archived copies, so it can be regenerated from them alone
        from roli.report.write import archive

        dirs = archive(dirs, Path(a.archive))
    report = write_report(Path(a.out or a.dirs[0]), dirs, spec=spec, doc=a.doc)
    print(report.read_text())
    return 0


def _export(a: argparse.Namespace) -> int:
    import json as _json

    from roli.checkpoints import load_file
    from roli.transfer.export import export
    from roli.transfer.state import load_model

    best = Path(a.run_dir) / "best.pt"
    if Path(a.output).exists():  # before rebuilding a lean model, which takes a while for ViT-B/Swin-B
        raise FileExistsError(f"{a.output} exists; roli does not overwrite it. Choose another path or remove it.")
    model, cfg = load_model(str(best), backbone=a.backbone)  # lean: rebuilt from the backbone file (hash checked)
    results = Path(a.run_dir) / "results.json"
    paths = export(model, cfg, load_file(best), a.output, a.format,
                   _json.loads(results.read_text()) if results.is_file() else None)
    epoch = load_file(best).get("epoch")
    print(f"exported {best} (epoch {epoch}) as {a.format} -> {', '.join(map(str, paths))}")
    return 0


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
    r.set_defaults(func=_run)


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
    e.add_argument("--suite", choices=["quick", "full", "sweep"], default=None,
                   help="quick: clean + PGD-10; full: clean + FGSM + PGD-10 + AutoAttack (standard); sweep: PGD "
                        "over eps x (0, 1/4, 1/2, 1, 2) and a large eps. Default: clean + the run's validation attack")
    e.add_argument("--aa", nargs="+", default=[], metavar="KEY=VALUE",
                   help="AutoAttack settings, e.g. version=custom attacks=[apgd-ce,apgd-t] n_iter=50")
    e.add_argument("--aa-state", default=None, help="AutoAttack resume file (default: beside the checkpoint)")
    e.add_argument("--output", help="JSON file (default: eval-<data>-<split>[-<suite>].json beside the checkpoint)")
    e.set_defaults(func=_eval)


def _add_list(sub) -> None:
    """`roli list`: its arguments."""
    sub.add_parser("list", help="registered backbones, datasets, methods and attacks").set_defaults(func=_list)


def _add_config(sub) -> None:
    """`roli config`: its arguments."""
    c = sub.add_parser("config", help="every recipe field with its type, default and help (no need to read config.py)")
    c.add_argument("section", nargs="?", help="one section: backbone, data, threat, attack, eval, transfer, train, "
                   "stage1, run, or one method/attack, e.g. transfer.lora, attack.autoattack (default: all)")
    c.set_defaults(func=_config)


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
    sw.set_defaults(func=_sweep)


def _add_tune(sub) -> None:
    """`roli tune`: its arguments."""
    t = sub.add_parser("tune", help="choose train.lr on validation robust accuracy (successive halving; resumable)")
    t.add_argument("recipe")
    t.add_argument("--lr", required=True, help="candidate learning rates, e.g. 1e-4,3e-4,1e-3")
    t.add_argument("--epochs", type=positive_int, default=1, help="epochs of the first round; doubled every round (default 1)")
    t.add_argument("--out", help="folder for the trials (several recipes may share one; default runs/tune/<recipe>)")
    t.add_argument("--record", help="folder for <recipe>.tuned.yaml, .tune.json and .tune.md (default: --out)")
    t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every trial")
    t.set_defaults(func=_tune)


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
    rep.set_defaults(func=_report)


def _add_export(sub) -> None:
    """`roli export`: its arguments."""
    x = sub.add_parser("export", help="save a run's best weights as a standalone file others can load (+ OUT.json)")
    x.add_argument("run_dir")
    x.add_argument("output")
    x.add_argument("--format", choices=["roli", "timm", "safetensors"], default="roli",
                   help="roli: roli's checkpoint (default); timm: timm's state dict, LoRA merged, for "
                        "timm.create_model(arch, num_classes=C, checkpoint_path=OUT); safetensors: the whole model")
    x.add_argument("--backbone", metavar="PATH", help="the backbone weights file of a lean best.pt, if it has moved "
                                                      "(its SHA-256 must match the one recorded)")
    x.set_defaults(func=_export)


# One parser function per verb, in --help order.
VERBS = (_add_run, _add_eval, _add_list, _add_config, _add_sweep, _add_tune, _add_report, _add_export)


def build_parser() -> argparse.ArgumentParser:
    """The `roli` argument parser: global flags, then each verb's sub-parser (see VERBS)."""
    p = argparse.ArgumentParser(prog="roli", description=__doc__.split("\n")[0] + " See README.md.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"roli {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in VERBS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The `roli` command: parse `argv`, run the verb; a user's or the machine's error is one line and exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from roli.errors import RoliError, one_line
    from roli.version import __version__

    # A RoliError (a user mistake or a fault of the machine: full disk, no GPU, out of memory) and an OSError from
    # the file system are one line on stderr and exit 2; anything else is a bug in roli and keeps its traceback.
    try:
        return args.func(args)
    except (RoliError, OSError) as e:
        print(f"roli {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"roli {args.command}: interrupted (an interrupted run continues with `roli run --resume <run folder>`)",
              file=sys.stderr)
        return 130
    except Exception as e:
        e.add_note(f"This is a bug in roli {__version__} (`roli {args.command}`), not a mistake in your input: please "
                   "report it with the command line and this traceback.")
        raise


if __name__ == "__main__":
    sys.exit(main())
