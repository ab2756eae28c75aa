"""`roli sweep GRID.yaml`: plan a sweep (the grid's cells, their configs, cost estimates and shards), describe it
(the dry-run table) and run this shard's cells resumably, ending with the report (roli.cli).

Re-running the same command skips complete cells, resumes interrupted ones and leaves failed ones alone (listed at
the end). RoLI cells reuse the stage 1 of the grid's linear-probe cell with the same settings (the pipeline's
stage-1 cache). `--dry-run` prints the cells and their estimated GPU-hours (roli.sweep.estimate), and says which
source each number came from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from roli.config import Config, ConfigError
from roli.files import atomic_write_json
from roli.sweep.cells import cell_status, evaluate_cell, run_cell
from roli.sweep.estimate import Estimate, architecture, cell_estimates, parse_shard, shard_of
from roli.sweep.grid import Cell, Grid, cell_config, expand, load_grid

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A sweep as it will run: every cell of the grid, its config, estimate and shard, and this shard."""

    grid: Grid
    cells: list[Cell]
    configs: list[Config]
    costs: list[float | None]
    shards: list[int]
    shard: tuple[int, int]
    out: Path
    estimates: list[Estimate] = field(default_factory=list)

    def selected(self) -> list[int]:
        """Indices of this shard's cells."""
        return [i for i, s in enumerate(self.shards) if s == self.shard[0] - 1]


def plan(grid_path: str | Path, shard: str = "1/1", out: str | None = None, overrides: list[str] = (),
         seeds: list[int] | None = None) -> Plan:
    """Expand and validate the whole grid (every recipe loads) before anything runs; `seeds`: only the cells of
    these seeds of the grid (e.g. seed 0 of several grids before any second seed), sharded among themselves."""
    grid = load_grid(grid_path)
    i, n = parse_shard(shard)
    cells = expand(grid, list(overrides))
    if seeds is not None:
        unknown = sorted(set(seeds) - {c.seed for c in cells})
        if unknown:
            raise ConfigError(f"{grid.path}: no cells with seed {unknown[0]}; the grid's seeds are {grid.seeds}")
        cells = [c for c in cells if c.seed in seeds]
    configs = [cell_config(c) for c in cells]
    estimates = cell_estimates(configs, grid.cost)
    costs = [e.gpu_hours for e in estimates]
    return Plan(grid, cells, configs, costs, shard_of(configs, costs, n), (i, n), Path(out or grid.out), estimates)


def _hours(h: float | None) -> str:
    return "?" if h is None else f"{h:.1f}" if h >= 0.05 else f"{h:.3f}"


def _sources(configs: list[Config], ests: list[Estimate], kind: str) -> dict[str, list[str]]:
    """source -> the architectures costed from it."""
    out: dict[str, list[str]] = {}
    for cfg, e in zip(configs, ests):
        src = e.gpu_source if kind == "gpu" else e.cpu_source
        if src is not None and architecture(cfg) not in out.setdefault(src, []):
            out[src].append(architecture(cfg))
    return out


def describe(p: Plan) -> str:
    """The dry-run table: every cell of the grid, its shard, status and estimated GPU-hours (suffix m = measured on
    a GPU, a = assumed), plus CPU-hours where the grid's measurements include CPU timings of the architecture; the
    last lines say which source each number came from."""
    width = max(len(c.name) for c in p.cells)
    ests = p.estimates or [Estimate(h, None if h is None else "assumed") for h in p.costs]
    show_cpu = any(e.cpu_hours is not None for e in ests)
    lines = [(f"grid {p.grid.path}: {len(p.cells)} cells, out {p.out}, shard {p.shard[0]}/{p.shard[1]} "
              f"({len(p.selected())} cells)"),
             f"{'#':>4}  {'shard':>5}  {'cell':<{width}}  {'status':<8}  est. GPU-h  "
             + ("est. CPU-h  " if show_cpu else "") + "recipe"]
    for i, (cell, e) in enumerate(zip(p.cells, ests)):
        mark = "*" if p.shards[i] == p.shard[0] - 1 else " "
        how = " " if e.gpu_source is None else "a" if e.gpu_source == "assumed" else "m"
        cpu = f"{_hours(e.cpu_hours):>10}  " if show_cpu else ""
        lines.append(f"{i + 1:>4}{mark} {p.shards[i] + 1:>5}  {cell.name:<{width}}  {cell_status(p.out, cell):<8}  "
                     f"{_hours(e.gpu_hours):>9}{how}  {cpu}{cell.recipe}")
    known = [h for h in p.costs if h is not None]
    per_shard = [sum(h or 0 for h, s in zip(p.costs, p.shards) if s == k) for k in range(p.shard[1])]
    lines.append(f"total: ~{sum(known):,.0f} GPU-hours for {len(known)} cells with a cost estimate "
                 f"({len(p.cells) - len(known)} without); per shard: {', '.join(f'{h:,.0f}' for h in per_shard)}")
    gpu_sources = _sources(p.configs, ests, "gpu")
    assumed = gpu_sources.pop("assumed", None)
    files = sorted({c.source for c in p.grid.cost.get("step_costs") or []})
    notes = [f"GPU-hours {src} for {', '.join(archs)} ({', '.join(files)}): roli's PGD-AT step and its parts as "
             "measured, scaled to each cell's PGD steps (m)." for src, archs in gpu_sources.items()]
    if assumed:
        notes.append(f"GPU-hours assumed for {', '.join(assumed or []) or 'no cell'} (a): {p.grid.cost['gpu']}, "
                     f"fwd+bwd images/s {p.grid.cost['images_per_s']}; GPU-h = images x (PGD steps + 1) / that rate.")
    unknown = sorted({architecture(c) for c, e in zip(p.configs, ests) if e.gpu_hours is None})
    if unknown:
        notes.append(f"No GPU-hours for {', '.join(unknown)}: no GPU measurement"
                     + (f" in {', '.join(files)}" if files else "") + " and no assumed rate (or an unknown dataset "
                     "size).")
    lines += [*notes[:-1], notes[-1] + " * = in this shard."]
    for src, archs in _sources(p.configs, ests, "cpu").items():
        total = sum(e.cpu_hours for e in ests if e.cpu_source == src and e.cpu_hours is not None)
        lines.append(f"CPU-hours {src} for {', '.join(archs)}: ~{total:,.1f} CPU-hours in all (a CPU measurement "
                     "is never used for GPU-hours).")
    return "\n".join(lines)


def run_sweep(p: Plan, nproc: int = 1, stop_after: float | None = None) -> dict[str, list[str]]:
    """Run this shard's cells in grid order (each under torchrun with `nproc` processes when > 1), then the grid's
    `evaluate:` on each complete cell; returns cell names by outcome. Failures do not stop the sweep. With
    `stop_after` (seconds), no new cell starts once that much time has passed and one has run (the running one
    finishes): a slice that fits a time budget, continued by the next call."""
    outcome: dict[str, list[str]] = {"complete": [], "ran": [], "failed": [], "skipped_failed": [], "not_started": []}
    t0 = time.monotonic()
    for i in p.selected():
        cell, cfg = p.cells[i], p.configs[i]
        status = cell_status(p.out, cell)
        if status == "failed":
            log.warning("sweep: %s failed before (see its results.json); move its folder away to retry", cell.name)
            outcome["skipped_failed"].append(cell.name)
            continue
        started = outcome["ran"] or outcome["failed"]  # a slice always trains at least one cell
        if stop_after is not None and started and time.monotonic() - t0 > stop_after:
            outcome["not_started"].append(cell.name)
            continue
        try:
            if status == "complete":
                log.info("sweep: %s is complete, skipped", cell.name)
                outcome["complete"].append(cell.name)
            else:
                log.info("sweep: cell %d/%d %s (%s)", i + 1, len(p.cells), cell.name, cell.recipe)
                run_cell(cell, cfg, p.out, nproc)
                outcome["ran"].append(cell.name)
            evaluate_cell(cell, cfg, p.out, p.grid.evaluate)
        except Exception as e:  # one broken cell (unsupported backbone, NaN, missing file) must not stop the grid
            log.error("sweep: %s failed: %s: %s", cell.name, type(e).__name__, e)
            outcome["failed"].append(f"{cell.name}: {type(e).__name__}: {e}")
    if outcome["not_started"]:
        log.info("sweep: --stop-after reached; %d cell(s) not started (run the same command again to go on)",
                 len(outcome["not_started"]))
    status_file = p.out / f"sweep-{p.grid.path.stem}-shard{p.shard[0]}of{p.shard[1]}.json"  # grids may share out
    atomic_write_json(status_file, {"grid": str(p.grid.path), "shard": list(p.shard), **outcome})
    return outcome


def finished_dirs(p: Plan) -> list[Path]:
    """Run folders of every complete cell of the grid (all shards: a shared output folder gives one report)."""
    return [p.out / c.name for c in p.cells if cell_status(p.out, c) == "complete"]
