"""One cell of a sweep: its status (from its run folder), running or resuming it (in this process, or as its own
torchrun job) and the grid's `evaluate:` on it once complete.

A cell resumes only with exactly the settings it started with; a folder killed as it was made (nothing in it but a
temp file) is cleaned and the cell starts again, anything else that is not a roli run is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from roli.config import Config, ConfigError, dump_config, load_config, to_dict
from roli.errors import ResultsError, RunDirError
from roli.files import TEMP_SUFFIX, atomic_write_json, read_json
from roli.sweep.grid import Cell
from roli.training.rundir import changed_settings

log = logging.getLogger(__name__)


def cell_status(out: Path, cell: Cell) -> str:
    """complete | failed | partial (a run folder to resume) | todo."""
    run_dir = out / cell.name
    res = run_dir / "results.json"
    if res.is_file():
        try:
            status = read_json(res, "results.json").get("status")
        except (ResultsError, AttributeError):  # damaged: resuming the run rewrites it
            status = None
        if status in ("complete", "failed"):
            return status
    return "partial" if (run_dir / "config.yaml").is_file() else "todo"


def torchrun_cell(cell: Cell, cfg: Config, out: Path, nproc: int, resume: bool) -> dict:
    """One cell as its own `torchrun --standalone --nproc-per-node nproc` job (a cell's GPUs; stage 1 included)."""
    import subprocess
    import sys

    cells = out / ".cells"
    cells.mkdir(parents=True, exist_ok=True)
    recipe = cells / f"{cell.name}.yaml"  # the resolved recipe of the cell, kept for the record
    dump_config(cfg, recipe)
    target = ["--resume", str(out / cell.name)] if resume else [str(recipe), "--out", str(out), "--name", cell.name]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "roli",
           "run", *target]
    log.info("sweep: %s", " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode} (its output above names the failing rank)")
    return read_json(out / cell.name / "results.json", "results file")


def run_cell(cell: Cell, cfg: Config, out: Path, nproc: int = 1) -> dict:
    """Run the cell into `out/<cell name>`, or resume it there; returns its results.json."""
    from roli.training.pipeline import run

    run_dir = out / cell.name
    if (run_dir / "config.yaml").is_file():
        saved = to_dict(load_config(run_dir / "config.yaml"))
        if saved != to_dict(cfg):  # no setting may change, not even a RESUMABLE_CHANGES one
            diff = [key for key, _, _ in changed_settings(to_dict(cfg), saved)]
            raise ConfigError(f"{run_dir}: the recipe changed since this cell started ({diff[:5]}); restore it, "
                              "or move the folder away to start the cell again")
        log.info("sweep: resuming %s", run_dir)
        if nproc > 1:
            return torchrun_cell(cell, cfg, out, nproc, resume=True)
        return run(cfg, resume=run_dir, recipe=str(cell.recipe))
    if run_dir.exists():
        # A folder without config.yaml: a kill right after it was made (empty, or a temp file of config.yaml).
        left = list(run_dir.iterdir())
        if any(not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)) for p in left):
            raise RunDirError(f"{run_dir} exists but is not a roli run (no config.yaml); move it away to run the cell")
        for p in left:
            p.unlink()
        run_dir.rmdir()
    if nproc > 1:
        return torchrun_cell(cell, cfg, out, nproc, resume=False)
    return run(cfg, out=out, name=cell.name, recipe=str(cell.recipe))


def evaluate_cell(cell: Cell, cfg: Config, out: Path, specs: list[dict[str, Any]]) -> list[str]:
    """The grid's `evaluate:` on a complete cell's best.pt, each skipped once its eval JSON exists; AutoAttack keeps
    its resumable state beside the checkpoint, so a killed sweep continues where it stopped. Returns files written."""
    from roli.evaluation.checkpoint import eval_path, evaluate_checkpoint

    written = []
    for spec in specs:
        if spec.get("seeds") is not None and cell.seed not in spec["seeds"]:
            continue
        split = spec.get("split", "test")
        target = eval_path(out / cell.name / "best.pt", cfg.data.name, split, spec["suite"])
        if target.is_file():
            continue
        log.info("sweep: %s: evaluating (%s)", cell.name, ", ".join(f"{k}={v}" for k, v in spec.items()))
        result = evaluate_checkpoint(str(out / cell.name / "best.pt"), split=split, suite=spec["suite"],
                                     aa=spec.get("aa"), limit=spec.get("limit"), device=cfg.run.device)
        atomic_write_json(target, result)
        written.append(str(target))
    return written
