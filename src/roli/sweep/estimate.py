"""Cost estimates of a sweep's cells, and its shards.

An architecture measured on a GPU (the grid's `cost: {measured: FILE}`, a JSON written by
`python benchmarks/run.py`, read by roli.sweep.costs) is costed from its measured PGD-AT step; every other one from
an assumed images-per-second table (`cost: {images_per_s: ...}`, else roli.sweep.grid.COST): images through the
backbone x (PGD steps + 1) / that rate. A CPU measurement never becomes GPU-hours: it is shown as CPU-hours beside
them. Every estimate says which source its number came from.

`--shard i/n` runs the i-th (1-based) of n slices, the same on every machine, with no coordinator: cells that share
a RoLI stage 1 stay together, and the groups are balanced by estimated cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from roli.config import AttackConfig, Config, ConfigError
from roli.data.facts import NATIVE_RES, OFFICIAL_SIZES, PAPER_SIZES, SHIPPED_SIZES
from roli.sweep.costs import StepCost, pick


def architecture(cfg: Config) -> str:
    """The architecture a run's backbone has (a known checkpoint's `arch`, else the backbone name): what is costed."""
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
    train = pick(costs, architecture(cfg), cfg.transfer.name, cfg.train.precision, res, gpu)
    evals = pick(costs, architecture(cfg), cfg.transfer.name, getattr(cfg.eval, "precision", "fp32"), res, gpu)
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
        ips = cost["images_per_s"].get(architecture(cfg))
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
    """Cells with the same key share one stage 1 (RoLI's or LP-FT's; the linear-probe RanLI cell provides it)."""
    from roli.training.pipeline import STAGE1_INITS, stage1_config, stage1_key

    return stage1_key(stage1_config(cfg)) if cfg.transfer.init in STAGE1_INITS else stage1_key(cfg)


def cell_estimates(configs: list[Config], cost: dict[str, Any]) -> list[Estimate]:
    """The Estimate of every cell (a RoLI or LP-FT cell whose stage 1 no grid cell provides includes it)."""
    from roli.training.pipeline import STAGE1_INITS, stage1_config

    provided = {stage1_group(c) for c in configs if c.transfer.init not in STAGE1_INITS} - {None}
    out = []
    for cfg in configs:
        est = estimate(cfg, cost)
        if cfg.transfer.init in STAGE1_INITS and stage1_group(cfg) not in provided:
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
    """`--shard i/n` -> (i, n), 1 <= i <= n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 2/4 (the 2nd of 4 slices)") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r}: need 1 <= i <= n (slices are numbered from 1)")
    return i, n
