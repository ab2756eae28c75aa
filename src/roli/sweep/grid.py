"""A sweep's grid file (see recipes/paper/grid.yaml) and its cells.

A grid names a recipe template and its axes; every combination of axis values (minus `exclude`) and seed is one
cell, a recipe with overrides (`set:`, the seed, the run name) that runs into `<out>/<cell name>`. `cost:` sets the
cost model (roli.sweep.estimate; `measured:` files are read here, see roli.sweep.costs) and `evaluate:` the
`roli eval`s run after each complete cell. Loading a grid validates all of it before anything runs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from roli.config import Config, ConfigError, load_config
from roli.sweep.costs import StepCost, load_step_costs

# Assumed forward+backward images/s at 224x224 for one training pass on one A100-class GPU (fp32 with TF32 matmuls,
# batch 64). NOT measured by roli (it was developed without a GPU); replace them in the grid's `cost:` with your
# own numbers: `cost: {measured: benchmarks/results/<file>.json}` (benchmarks/run.py). An H100 is roughly 1.5-2x faster.
COST = {"gpu": "A100-class GPU (assumed throughput, not measured)",
        "images_per_s": {"swin_base_patch4_window7_224": 250.0, "vit_base_patch16_224": 400.0, "resnet50": 900.0}}
GRID_KEYS = ("recipe", "axes", "seeds", "exclude", "set", "out", "cost", "evaluate")
EVALUATE_KEYS = ("suite", "aa", "limit", "split", "seeds")
COST_KEYS = ("gpu", "images_per_s", "measured")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its recipe file and the overrides that make it this cell."""

    name: str  # run folder name: axis values and seed, e.g. swin_b-lora-cifar10-roli-s0
    recipe: Path
    values: dict[str, str]
    seed: int | None
    overrides: tuple[str, ...]


@dataclass
class Grid:
    """A grid file, read and checked."""

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
    """Read and check a grid file; every mistake is a ConfigError naming the file."""
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
    """The cell's recipe with its overrides."""
    return load_config(cell.recipe, list(cell.overrides))
