"""`roli sweep GRID.yaml`: expand a grid of recipes into cells, run them resumably, end with the report.

A grid (see recipes/paper/grid.yaml) names a recipe template and its axes; every combination of axis values (minus
`exclude`) and seed is one cell, run as `pipeline.run` into `<out>/<cell name>`. Re-running the same command skips
complete cells, resumes interrupted ones and leaves failed ones alone (listed at the end). RoLI cells reuse the
stage 1 of the grid's linear-probe cell with the same settings (the pipeline's stage-1 cache).

`--shard i/n` runs the i-th (1-based) of n slices, the same on every machine, with no coordinator: cells that share
a RoLI stage 1 stay together, and the groups are balanced by estimated cost. `--dry-run` prints the cells and their
estimated GPU-hours. With `cost: {measured: FILE}` in the grid (a JSON written by `python benchmarks/run.py`; a
path relative to the grid, or a list of them), an architecture measured on a GPU is costed from its measured PGD-AT
step (roli.training.costs); every other one from an assumed images-per-second table (`cost: {images_per_s: ...}`,
else COST below): images through the backbone x (PGD steps + 1) / that rate. A CPU measurement never becomes
GPU-hours: it is shown as CPU-hours beside them. The dry run says which source each number came from.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from roli.config import AttackConfig, Config, ConfigError, dump_config, load_config, to_dict
from roli.errors import ResultsError, RunDirError
from roli.files import TEMP_SUFFIX, atomic_write_json, read_json
from roli.training.costs import StepCost, load_step_costs, pick

log = logging.getLogger(__name__)

# Assumed forward+backward images/s at 224x224 for one training pass on one A100-class GPU (fp32 with TF32 matmuls,
# batch 64). NOT measured by roli (it was developed without a GPU); replace them in the grid's `cost:` with your
# own numbers: `cost: {measured: benchmarks/results/<file>.json}` (benchmarks/run.py). An H100 is roughly 1.5-2x faster.
COST = {"gpu": "A100-class GPU (assumed throughput, not measured)",
        "images_per_s": {"swin_base_patch4_window7_224": 250.0, "vit_base_patch16_224": 400.0, "resnet50": 900.0}}
# The paper's split sizes (protocol §4): train, val, test.
PAPER_SIZES = {"cifar10": (45_000, 5_000, 10_000), "cifar100": (45_000, 5_000, 10_000),
               "caltech256": (14_649, 771, 15_187), "cub200": (5_394, 600, 5_794),
               "stanford_dogs": (10_800, 1_200, 8_580)}
# The shipped copies (no data.root): train+val pool and test; val = round(pool x data.val_fraction).
SHIPPED_SIZES = {"mnist": (8_000, 2_000), "fashion_mnist": (10_000, 2_000), "synthetic": (600, 200)}
OFFICIAL_SIZES = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000)}  # the idx files in data.root
NATIVE_RES = {"mnist": 28, "fashion_mnist": 28, "synthetic": 28, "cifar10": 32, "cifar100": 32}
GRID_KEYS = ("recipe", "axes", "seeds", "exclude", "set", "out", "cost", "evaluate")
EVALUATE_KEYS = ("suite", "aa", "limit", "split", "seeds")
COST_KEYS = ("gpu", "images_per_s", "measured")


@dataclass(frozen=True)
class Cell:
    name: str  # run folder name: axis values and seed, e.g. swin_b-lora-cifar10-roli-s0
    recipe: Path
    values: dict[str, str]
    seed: int | None
    overrides: tuple[str, ...]


@dataclass
class Grid:
    path: Path
    recipe: str
    axes: dict[str, list[str]]
    seeds: list[int] | None = None
    exclude: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    out: str = "runs/sweep"
    cost: dict[str, Any] = field(default_factory=lambda: dict(COST))
    # `roli eval` runs after each complete cell (e.g. AutoAttack), each skipped once its eval-*.json exists
    evaluate: list[dict[str, Any]] = field(default_factory=list)


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{path}: not a readable YAML grid ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid must be a mapping with `recipe:` and `axes:`")
    unknown = [k for k in data if k not in GRID_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys are {list(GRID_KEYS)}")
    if not isinstance(data.get("recipe"), str) or not isinstance(data.get("axes"), dict) or not data["axes"]:
        raise ConfigError(f"{path}: needs `recipe:` (a template like '{{method}}_{{dataset}}.yaml') and `axes:`")
    axes = {k: [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in data["axes"].items()}
    seeds = data.get("seeds")
    if seeds is not None and not _int_list(seeds):
        raise ConfigError(f"{path}: seeds must be a list of integers, got {seeds!r}")
    used = set(re.findall(r"{(\w+)", data["recipe"]))
    unused = [k for k in axes if k not in used]
    if unused:
        raise ConfigError(f"{path}: axis/axes {unused} do not appear in the recipe template {data['recipe']!r} "
                          f"(which uses {sorted(used)}); every axis must pick a recipe file")
    rules = data.get("exclude") or []
    for rule in rules if isinstance(rules, list) else [rules]:
        if not isinstance(rule, dict) or not rule or any(k not in axes for k in rule):
            raise ConfigError(f"{path}: exclude rule {rule!r} must map axis names {list(axes)} to values; an unknown "
                              "axis would silently exclude nothing")
    overrides = data.get("set") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{path}: `set:` must be a list of KEY=VALUE strings, got {overrides!r}")
    cost = load_cost(data.get("cost") or {}, path)
    return Grid(path, data["recipe"], axes, seeds, list(data.get("exclude") or []), list(data.get("set") or []),
                data.get("out") or "runs/sweep", cost, load_evaluate(data.get("evaluate") or [], path))


def _int_list(value: Any) -> bool:
    """A list of integers (a grid's `seeds:`, an `evaluate:` item's `seeds:`)."""
    return isinstance(value, list) and all(isinstance(v, int) for v in value)


def load_evaluate(raw: Any, grid_path: Path) -> list[dict[str, Any]]:
    """The grid's `evaluate:` list, each item the arguments of a `roli eval` of every cell's best.pt."""
    from roli.evaluation.suite import SUITES

    items = raw if isinstance(raw, list) else [raw]
    for item in items:
        if not isinstance(item, dict) or any(k not in EVALUATE_KEYS for k in item):
            raise ConfigError(f"{grid_path}: evaluate: {item!r} must be a mapping with keys from {list(EVALUATE_KEYS)}"
                              ", e.g. {suite: full, aa: {version: custom, attacks: [apgd-ce, apgd-t]}}")
        if item.get("suite") not in SUITES:
            raise ConfigError(f"{grid_path}: evaluate: suite must be one of {list(SUITES)}, got {item.get('suite')!r}")
        if item.get("split", "test") not in ("train", "val", "test"):
            raise ConfigError(f"{grid_path}: evaluate: split must be train, val or test")
        if not isinstance(item.get("aa") or {}, dict):
            raise ConfigError(f"{grid_path}: evaluate: aa must map AutoAttack fields to values")
        seeds = item.get("seeds")
        if seeds is not None and not _int_list(seeds):
            raise ConfigError(f"{grid_path}: evaluate: seeds must be a list of integers (the cells to evaluate)")
    return items


def load_cost(raw: Any, grid_path: Path) -> dict[str, Any]:
    """The grid's `cost:` over COST; `measured:` files (relative to the grid, else to the working directory) are
    read into `step_costs`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{grid_path}: cost must be a mapping with keys {list(COST_KEYS)}")
    unknown = [k for k in raw if k not in COST_KEYS]
    if unknown:
        raise ConfigError(f"{grid_path}: cost: unknown key(s) {unknown}; valid keys are {list(COST_KEYS)}")
    cost = {**COST, **raw}
    files = raw.get("measured") or []
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError(f"{grid_path}: cost.measured must be a file name or a list of them, got {files!r}")
    step_costs: list[StepCost] = []
    for f in files:
        near = grid_path.parent / f
        step_costs += load_step_costs(near if near.is_file() or Path(f).is_absolute() else Path(f))
    cost["step_costs"] = step_costs
    return cost


def _excluded(values: dict[str, str], rules: list[dict[str, Any]]) -> bool:
    def match(rule_value, value):
        return value in ([str(v) for v in rule_value] if isinstance(rule_value, list) else [str(rule_value)])

    return any(all(match(v, values.get(k)) for k, v in rule.items()) for rule in rules)


def expand(grid: Grid, extra: list[str] = ()) -> list[Cell]:
    """Every seed (slowest: a sweep stopped early leaves whole seeds done) times every combination of the axes
    (first axis slowest), minus `exclude`."""
    cells, missing = [], []
    for seed, combo in itertools.product(grid.seeds if grid.seeds is not None else [None],
                                         itertools.product(*grid.axes.values())):
        values = dict(zip(grid.axes, combo))
        if _excluded(values, grid.exclude):
            continue
        try:
            recipe = grid.path.parent / grid.recipe.format(**values)
        except KeyError as e:
            raise ConfigError(f"{grid.path}: the recipe template uses {e}, which is not an axis") from None
        if not recipe.is_file() and str(recipe) not in missing:
            missing.append(str(recipe))
        name = "-".join(combo) + (f"-s{seed}" if seed is not None else "")
        over = [*grid.overrides, *extra, *([f"run.seed={seed}"] if seed is not None else []), f"run.name={name}"]
        cells.append(Cell(name, recipe, values, seed, tuple(over)))
    if missing:
        raise ConfigError(f"{grid.path}: {len(missing)} cell recipe(s) do not exist, e.g. {missing[:3]}; add them "
                          "or list the cells under `exclude:`")
    return cells


def cell_config(cell: Cell) -> Config:
    return load_config(cell.recipe, list(cell.overrides))


# --------------------------------------------------------------------------- cost estimates and shards


def _arch(cfg: Config) -> str:
    from roli.backbones.known import known_checkpoints

    entry = known_checkpoints().get(cfg.backbone.name)
    return entry.arch if entry else cfg.backbone.name


def attack_passes(attack: AttackConfig) -> float:
    """Forward+backward passes per image of an attack (PGD: steps x restarts; FGSM: 1; AutoAttack: ~1,000)."""
    return getattr(attack, "steps", 1) * getattr(attack, "restarts", 1) if attack.name != "autoattack" else 1000


def split_sizes(cfg: Config) -> tuple[int, int, int] | None:
    """(train, val, test) images of a run, after the limits; None for a dataset of unknown size."""
    d = cfg.data
    table = OFFICIAL_SIZES if d.root else SHIPPED_SIZES
    if d.name in PAPER_SIZES:
        sizes = PAPER_SIZES[d.name]
    elif d.name in table:
        pool, test = table[d.name]
        val = round(pool * d.val_fraction)
        sizes = (pool - val, val, test)
    else:
        return None
    limits = (d.train_limit, d.val_limit, d.test_limit)
    return tuple(min(n, lim) if lim else n for n, lim in zip(sizes, limits))  # type: ignore[return-value]


def resolution(cfg: Config) -> int:
    """The side in pixels the backbone computes at: its input_size, else the data's own size."""
    return cfg.backbone.input_size or NATIVE_RES.get(cfg.data.name, cfg.data.crop_size)


@dataclass(frozen=True)
class Estimate:
    """Hours of one run and where the numbers came from ("measured on ... on DATE" or "assumed")."""

    gpu_hours: float | None
    gpu_source: str | None
    cpu_hours: float | None = None
    cpu_source: str | None = None

    def __add__(self, other: Estimate) -> Estimate:
        add = lambda a, b: None if a is None or b is None else a + b
        return Estimate(add(self.gpu_hours, other.gpu_hours), self.gpu_source or other.gpu_source,
                        add(self.cpu_hours, other.cpu_hours), self.cpu_source or other.cpu_source)


def _measured_hours(cfg: Config, sizes: tuple[int, int, int], costs: list[StepCost],
                    gpu: bool) -> tuple[float | None, str | None]:
    res = resolution(cfg)
    train = pick(costs, _arch(cfg), cfg.transfer.name, cfg.train.precision, res, gpu)
    evals = pick(costs, _arch(cfg), cfg.transfer.name, getattr(cfg.eval, "precision", "fp32"), res, gpu)
    if train is None or evals is None:
        return None, None
    (tc, t_scale), (ec, e_scale) = train, evals
    n_train, n_val, n_test = sizes
    steps = attack_passes(cfg.attack) if cfg.train.adversarial else 0
    per_train = tc.train_seconds(steps) * t_scale
    per_eval = ec.eval_seconds(attack_passes(cfg.eval.attack)) * e_scale
    seconds = cfg.train.epochs * (n_train * per_train + n_val * per_eval) + n_test * per_eval
    src = tc.describe() + (f" (scaled from {tc.resolution} px)" if tc.resolution != res else "")
    return seconds / 3600, src


def estimate(cfg: Config, cost: dict[str, Any]) -> Estimate:
    """GPU-hours (from a GPU measurement of the architecture, else the assumed table) and, where a CPU measurement
    of it exists, CPU-hours."""
    sizes = split_sizes(cfg)
    if sizes is None:
        return Estimate(None, None)
    step_costs = cost.get("step_costs") or []
    gpu_hours, gpu_src = _measured_hours(cfg, sizes, step_costs, gpu=True)
    if gpu_hours is None:
        ips = cost["images_per_s"].get(_arch(cfg))
        if ips is not None:
            n_train, n_val, n_test = sizes
            train_passes = attack_passes(cfg.attack) + 1 if cfg.train.adversarial else 1
            eval_passes = attack_passes(cfg.eval.attack) + 1 / 3  # the attack + a clean forward (~1/3 of fwd+bwd)
            images = cfg.train.epochs * (n_train * train_passes + n_val * eval_passes) + n_test * eval_passes
            gpu_hours, gpu_src = images / ips / 3600, "assumed"
    cpu_hours, cpu_src = _measured_hours(cfg, sizes, step_costs, gpu=False)
    return Estimate(gpu_hours, gpu_src, cpu_hours, cpu_src)


def estimate_hours(cfg: Config, cost: dict[str, Any]) -> float | None:
    """GPU-hours of one run: from a GPU measurement of its architecture (the grid's `cost.measured`), else every
    image through the backbone costs one fwd+bwd per PGD step plus one at the assumed images/s."""
    return estimate(cfg, cost).gpu_hours


def stage1_group(cfg: Config) -> str | None:
    """Cells with the same key share one RoLI stage 1 (the linear-probe RanLI cell provides it)."""
    from roli.training.pipeline import stage1_config, stage1_key

    return stage1_key(stage1_config(cfg)) if cfg.transfer.init == "roli" else stage1_key(cfg)


def cell_estimates(configs: list[Config], cost: dict[str, Any]) -> list[Estimate]:
    from roli.training.pipeline import stage1_config

    provided = {stage1_group(c) for c in configs if c.transfer.init != "roli"} - {None}
    out = []
    for cfg in configs:
        est = estimate(cfg, cost)
        if cfg.transfer.init == "roli" and stage1_group(cfg) not in provided:
            est = est + estimate(stage1_config(cfg), cost)  # no grid cell provides this stage 1: it runs here
        out.append(est)
    return out


def cell_costs(configs: list[Config], cost: dict[str, Any]) -> list[float | None]:
    """GPU-hours per cell (a RoLI cell whose stage 1 no grid cell provides includes it)."""
    return [e.gpu_hours for e in cell_estimates(configs, cost)]


def shard_of(configs: list[Config], costs: list[float | None], n: int) -> list[int]:
    """The shard (0-based) of every cell: stage-1 groups kept together, greedy balance by cost, deterministic."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(stage1_group(cfg) or f"cell-{i}", []).append(i)
    weight = lambda idx: sum(costs[i] if costs[i] is not None else 1.0 for i in idx)
    load, shard = [0.0] * n, [0] * len(configs)
    for idx in sorted(groups.values(), key=lambda idx: (-weight(idx), idx[0])):
        target = min(range(n), key=lambda s: (load[s], s))
        load[target] += weight(idx)
        for i in idx:
            shard[i] = target
    return shard


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 2/4 (the 2nd of 4 slices)") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r}: need 1 <= i <= n (slices are numbered from 1)")
    return i, n


# --------------------------------------------------------------------------- running


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
    from roli.training.pipeline import run

    run_dir = out / cell.name
    if (run_dir / "config.yaml").is_file():
        saved = load_config(run_dir / "config.yaml")
        if to_dict(saved) != to_dict(cfg):
            diff = [f"{s}.{k}" for s in to_dict(cfg) for k in to_dict(cfg)[s]
                    if to_dict(cfg)[s][k] != to_dict(saved).get(s, {}).get(k)]
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


@dataclass
class Plan:
    grid: Grid
    cells: list[Cell]
    configs: list[Config]
    costs: list[float | None]
    shards: list[int]
    shard: tuple[int, int]
    out: Path
    estimates: list[Estimate] = field(default_factory=list)

    def selected(self) -> list[int]:
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
        if src is not None and _arch(cfg) not in out.setdefault(src, []):
            out[src].append(_arch(cfg))
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
    unknown = sorted({_arch(c) for c, e in zip(p.configs, ests) if e.gpu_hours is None})
    if unknown:
        notes.append(f"No GPU-hours for {', '.join(unknown)}: no GPU measurement"
                     + (f" in {', '.join(files)}" if files else "") + " and no assumed rate (or an unknown dataset "
                     "size).")
    lines += notes[:-1] + [notes[-1] + " * = in this shard."]
    for src, archs in _sources(p.configs, ests, "cpu").items():
        total = sum(e.cpu_hours for e in ests if e.cpu_source == src and e.cpu_hours is not None)
        lines.append(f"CPU-hours {src} for {', '.join(archs)}: ~{total:,.1f} CPU-hours in all (a CPU measurement "
                     "is never used for GPU-hours).")
    return "\n".join(lines)


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
        except Exception as e:  # noqa: BLE001  (one broken cell (unsupported backbone, NaN, missing file) must not stop the grid)
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
