"""`roli tune RECIPE --lr 1e-4,3e-4,1e-3`: the learning rate chosen on validation robust accuracy, by successive
halving (Jamieson & Talwalkar 2016; Li et al. 2018's Hyperband rung): every candidate trains a short budget, the
better half (rounded up; by best *validation* robust accuracy, never test) goes on with twice the epochs, until the
last two have been compared (training a lone survivor longer would decide nothing).

Every trial is an ordinary run folder under `out/` (`<recipe>-lr<value>-e<epochs>`), so a killed tuning re-run
skips the finished trials and resumes the interrupted one, and several recipes can share one folder (RoLI recipes
then share one stage 1). The result: `<recipe>.tune.json` and `<recipe>.tune.md` (what was tried, the validation
numbers, the choice) and `<recipe>.tuned.yaml`, the recipe with the chosen `train.lr`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

from roli.config import Config, ConfigError, load_config
from roli.files import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)


def parse_lrs(text: str) -> list[float]:
    """`1e-4,3e-4,1e-3` -> floats (each > 0, no repeats)."""
    try:
        lrs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lr {text!r}: expected comma-separated numbers, e.g. 1e-4,3e-4,1e-3") from None
    if not lrs or any(not (v > 0 and math.isfinite(v)) for v in lrs) or len(set(lrs)) != len(lrs):
        raise ConfigError(f"--lr {text!r}: give distinct learning rates > 0, e.g. 1e-4,3e-4,1e-3")
    names = [f"{v:g}" for v in lrs]  # a trial folder is named by its rate: two rates must not share a name
    alike = sorted({n for n in names if names.count(n) > 1})
    if alike:
        same = [repr(v) for v, n in zip(lrs, names) if n == alike[0]]
        raise ConfigError(f"--lr {text!r}: {' and '.join(same)} both name the trial folder lr{alike[0]}; give rates "
                          "that differ in their first 6 significant digits")
    return lrs


def _trial(cfg: Config, stem: str, lr: float, epochs: int, out: Path) -> dict:
    """One run (or the finished/partial one already there) at `lr` for `epochs` epochs; returns its results."""
    from roli.training.pipeline import run

    name = f"{stem}-lr{lr:g}-e{epochs}"
    warmup = min(cfg.train.warmup_epochs, epochs)
    trial_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=lr, epochs=epochs,
                                                                   warmup_epochs=warmup))
    run_dir = out / name
    if (run_dir / "config.yaml").is_file() and (had := load_config(run_dir / "config.yaml").train.lr) != lr:
        raise ConfigError(f"tune: {run_dir} holds a trial at lr {had!r}, not {lr!r} (the two rates name one folder); "
                          "tune into another --out, or give that trial's rate")
    if (run_dir / "results.json").is_file() and read_json(run_dir / "results.json").get("status") == "complete":
        log.info("tune: %s is complete, reused", name)
        return read_json(run_dir / "results.json")
    if (run_dir / "config.yaml").is_file():
        return run(trial_cfg, resume=run_dir)
    return run(trial_cfg, out=out, name=name)


def tune(recipe: str | Path, lrs: list[float], out: str | Path, epochs: int = 1, overrides: list[str] = (),
         record: str | Path | None = None) -> dict:
    """Successive halving over `lrs` from `epochs` epochs (doubling per round); returns the tune.json content.

    The trials go to `out`; the tuned recipe, tune.json and tune.md to `record` (default `out`), e.g. a folder of
    the repository that is committed while the trials are not. The tuned recipe names its base by a relative path.
    """
    recipe = Path(recipe)
    cfg = load_config(recipe, overrides)
    if epochs < 1:
        raise ConfigError("--epochs must be >= 1")
    out = Path(out)
    alive, rounds, budget = list(lrs), [], epochs
    while True:
        scores = []
        for lr in alive:
            res = _trial(cfg, recipe.stem, lr, budget, out)
            scores.append({"lr": lr, "epochs": budget, "val_robust": res["best_val"]["robust"],
                           "val_clean": res["best_val"]["clean"], "selected_epoch": res["selected_epoch"],
                           "run_dir": res["run_dir"]})
        # best validation robust accuracy; ties: higher clean accuracy, then the smaller learning rate
        scores.sort(key=lambda s: (-s["val_robust"], -s["val_clean"], s["lr"]))
        rounds.append(scores)
        if len(alive) <= 2:
            break
        alive = [s["lr"] for s in scores[:math.ceil(len(scores) / 2)]]
        budget *= 2
    chosen = rounds[-1][0]
    edge = grid_edge(chosen["lr"], lrs)
    if edge:
        log.warning("roli tune %s: lr %g is the %s rate tried; the best may lie beyond it: widen --lr",
                    recipe.name, chosen["lr"], edge)
    record = Path(record or out)
    record.mkdir(parents=True, exist_ok=True)
    tuned = record / f"{recipe.stem}.tuned.yaml"
    base = os.path.relpath(recipe.resolve(), record.resolve())
    extra = "".join(f"# tuned with --set {o} (not part of this recipe: pass it again)\n" for o in overrides)
    atomic_write_text(tuned, f"# {recipe.name} with the learning rate chosen by `roli tune` on validation robust "
                             f"accuracy\n# (successive halving over {lrs}; see {recipe.stem}.tune.md). Test accuracy "
                             f"played no part.\n{extra}base: {base}\ntrain: {{lr: {chosen['lr']!r}}}\n")
    result = {"recipe": str(recipe), "overrides": list(overrides), "lrs": lrs, "first_epochs": epochs,
              "selection": "best validation robust accuracy (then clean, then smaller lr)", "rounds": rounds,
              "chosen": chosen, "edge": edge, "tuned_recipe": str(tuned)}
    atomic_write_json(record / f"{recipe.stem}.tune.json", result)
    atomic_write_text(record / f"{recipe.stem}.tune.md", markdown(result))
    return result


def grid_edge(lr: float, lrs: list[float]) -> str | None:
    """"largest" / "smallest" when the chosen rate sits at the grid's edge (the optimum may lie outside), else None."""
    if len(lrs) < 2:
        return None
    return "largest" if lr == max(lrs) else "smallest" if lr == min(lrs) else None


def markdown(result: dict) -> str:
    """tune.md: the rounds, the validation numbers and the choice."""
    lines = [f"# roli tune: {result['recipe']}", "",
             (f"Successive halving over lr {result['lrs']}, starting at {result['first_epochs']} epoch(s); selected "
              f"on {result['selection']}."), "", "| round | lr | epochs | val robust | val clean | selected epoch |",
             "|---|---|---|---|---|---|"]
    for k, scores in enumerate(result["rounds"], 1):
        lines += [f"| {k} | {s['lr']:g} | {s['epochs']} | {s['val_robust']:.2f} | {s['val_clean']:.2f} | "
                  f"{s['selected_epoch']} |" for s in scores]
    lines += ["", f"Chosen: lr {result['chosen']['lr']:g} -> `{result['tuned_recipe']}`", ""]
    if result.get("edge"):
        lines += [(f"Note: the chosen rate is the {result['edge']} one tried, so the best may lie beyond the grid; "
                   "widen `--lr` on that side to be sure. Short trials also favour large rates."), ""]
    return "\n".join(lines)
