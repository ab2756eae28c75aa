"""`roli run | eval | list | config | sweep | tune | report | export`: thin wrappers over the Python API.

One handler per verb (`_run`, `_eval`, ...: HANDLERS); the parser, one function per verb, is roli.cli.parser.

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

from roli.cli.parser import build_parser
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
    from roli.report.write import read_report, write_report
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
    print(read_report(out))
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
    if (a.aa or a.aa_state) and a.suite not in ("full", "aa") and a.attack != "autoattack":
        raise ConfigError("--aa and --aa-state apply to AutoAttack: use them with --suite full (or aa) or --attack "
                          "autoattack")
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
        t = k.pretrain_threat
        eps = "standard training" if t is None else \
            f"robust {t.norm} eps {eps_str(t.eps) if t.norm == 'linf' else f'{t.eps:g}'}"
        print(f"  {name}: {k.arch}, format {k.format}, {eps}; from {k.source}")
    print("checkpoint formats (backbone.format):", ", ".join(["auto", *CONVERTERS.names()]))
    print("datasets: ", ", ".join(DATASETS.names()), "(data.root: the dataset's folder; see README)")
    print("transfer methods:")
    for name in TRANSFER.names():
        print(f"  {name}: {_fields(TRANSFER.get(name).config_cls)}")
    from roli.transfer.matrix import print_matrix

    print_matrix()
    print(f"threat: {_fields(ThreatConfig)}  (one section: training, validation, test and `roli eval`)")
    print("attacks (* = can train):")
    for name in ATTACKS.names():
        cls = ATTACKS.get(name).config_cls
        print(f"  {name}{'*' if cls.trainable else ''}: {_fields(cls) or '-'}")
    from roli.registry import OBJECTIVES, SCHEDULES

    print("training objectives (train.objective):")
    for name in OBJECTIVES.names():
        cls = OBJECTIVES.get(name).config_cls
        need = f" (needs attack.loss: {cls.attack_loss})" if cls.attack_loss else ""
        print(f"  {name}: {_fields(cls) or '-'}{need}")
    print("attack schedules (train.attack_schedule.{eps,step_size,steps}; multipliers of the target per epoch):")
    for name in SCHEDULES.names():
        print(f"  {name}: {_fields(SCHEDULES.get(name)) or '-'}")
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
    from roli.report.write import read_report, write_report

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
    print(read_report(report.parent))
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


def _interpolate(a: argparse.Namespace) -> int:
    from roli.evaluation.interpolate import interpolate_run, parse_alphas
    from roli.report.curves import curve_folder, write_curve

    alphas = parse_alphas(a.alphas)  # bad alphas and an existing --out fail before any model is built
    folder = curve_folder(a.run_dir, a.out)
    curve = interpolate_run(a.run_dir, alphas, split=a.split, device=a.device)
    paths = write_curve(folder, curve)
    c = curve["chosen"]
    print(f"chosen alpha {curve['chosen_alpha']:g} ({a.split} robust {c[f'{a.split}_robust']:.2f}%, clean "
          f"{c[f'{a.split}_clean']:.2f}%): test clean {c['test_clean']:.2f}%, {curve['attack']['name']} "
          f"{c['test_robust']:.2f}% -> {', '.join(map(str, paths))}")
    return 0


# The handler of each verb (the parser is roli.cli.parser's).
HANDLERS = {"run": _run, "eval": _eval, "list": _list, "config": _config, "sweep": _sweep, "tune": _tune,
            "report": _report, "export": _export, "interpolate": _interpolate}


def main(argv: list[str] | None = None) -> int:
    """The `roli` command: parse `argv`, run the verb; a user's or the machine's error is one line and exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from roli.errors import RoliError, one_line

    # A RoliError (a user mistake or a fault of the machine: full disk, no GPU, out of memory) and an OSError from
    # the file system are one line on stderr and exit 2; anything else is a bug in roli and keeps its traceback.
    try:
        return HANDLERS[args.command](args)
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
