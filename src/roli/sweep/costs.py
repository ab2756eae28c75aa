"""Measured step costs for the sweep's cost model, read from benchmarks/run.py's JSON (format roli-benchmark/1).

The benchmark records, per architecture, transfer method, resolution and precision, the seconds per image of one
PGD-AT training step with k attack steps (roli's loop, measured end to end) and its parts, each timed alone:
one attack pass (forward + input-gradient backward), one training pass (forward + backward + optimizer step) and one
no-grad forward. A run's cost then follows from them:

    training image, k' attack steps:  overhead x (k' x attack + train),   overhead = measured / (k x attack + train)
    evaluation image, attack of p passes: overhead x p x attack + 3 x forward  (PGD's select forward, the accuracy
                                          forward on the adversarial batch, the clean forward)

A file without the parts falls back to scaling the measured step by (k' + 1) / (k + 1). A measurement at another
resolution is scaled by the pixel count (and says so). Only CUDA measurements give GPU-hours; CPU ones give
CPU-hours.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from roli.backbones.tiny_vit import SHIPPED
from roli.config import ConfigError

FORMAT = "roli-benchmark/1"
# roli backbones that share an architecture (and so a step cost) with a measured one.
ARCH_ALIASES = dict.fromkeys(SHIPPED, "vit_tiny_28")  # pretrained variants cost what their architecture costs
REQUIRED = ("arch", "resolution", "attack_steps", "seconds_per_image", "device")


@dataclass(frozen=True)
class StepCost:
    """One measured step cost of benchmarks/run.py (per architecture, method, resolution, precision, device)."""

    arch: str
    transfer: str
    resolution: int
    precision: str
    attack_steps: int
    seconds_per_image: float  # one training step with `attack_steps` PGD steps, roli's loop, per image
    attack_pass: float | None  # forward + input-gradient backward, per image
    train_pass: float | None  # forward + backward + optimizer step, per image
    forward: float | None  # no-grad forward, per image
    device: str  # cuda | cpu
    device_name: str
    date: str
    source: str  # the file it was read from

    @property
    def gpu(self) -> bool:
        """Measured on a CUDA device."""
        return self.device == "cuda"

    @property
    def has_parts(self) -> bool:
        """The attack pass, training pass and forward were timed too."""
        return bool(self.attack_pass and self.train_pass and self.forward)

    @property
    def overhead(self) -> float:
        """roli's measured step over the sum of its parts timed alone (>= ~1)."""
        return self.seconds_per_image / (self.attack_steps * self.attack_pass + self.train_pass)

    def train_seconds(self, steps: int) -> float:
        """Seconds per image of a training step with `steps` attack steps (0 = standard training)."""
        if self.has_parts:
            return self.overhead * (steps * self.attack_pass + self.train_pass)
        return self.seconds_per_image * (steps + 1) / (self.attack_steps + 1)

    def eval_seconds(self, passes: float) -> float:
        """Seconds per image of evaluating clean + an attack of `passes` input-gradient passes."""
        if self.has_parts:
            return self.overhead * passes * self.attack_pass + 3 * self.forward
        return self.seconds_per_image / (self.attack_steps + 1) * (passes + 1 / 3)

    def describe(self) -> str:
        """Where the number came from, for the dry run."""
        return f"measured on {self.device_name} on {self.date}"


def _num(entry: dict, key: str, where: str) -> float | None:
    v = entry.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{where}: {key} must be a positive number, got {v!r}")
    return float(v)


def load_step_costs(path: str | Path) -> list[StepCost]:
    """The `step_costs` of a benchmark JSON; a file that is not one is a ConfigError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cost.measured: {path} not found (write one with `python benchmarks/run.py`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cost.measured: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"cost.measured: {path} is not a roli benchmark result (format {FORMAT!r})")
    machine = data.get("machine") or {}
    out = []
    for i, e in enumerate(data.get("step_costs") or []):
        where = f"{path} step_costs[{i}]"
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise ConfigError(f"{where}: missing {missing}")
        if e["device"] not in ("cuda", "cpu"):
            raise ConfigError(f"{where}: device must be cuda or cpu, got {e['device']!r}")
        out.append(StepCost(
            arch=str(e["arch"]), transfer=str(e.get("transfer", "full_finetune")), resolution=int(e["resolution"]),
            precision=str(e.get("precision", "fp32")), attack_steps=int(e["attack_steps"]),
            seconds_per_image=_num(e, "seconds_per_image", where),
            attack_pass=_num(e, "attack_pass_seconds_per_image", where),
            train_pass=_num(e, "train_pass_seconds_per_image", where),
            forward=_num(e, "forward_seconds_per_image", where),
            device=e["device"],
            device_name=str(e.get("device_name") or machine.get("device_name") or machine.get("gpu") or e["device"]),
            date=str(e.get("date") or machine.get("date", "?"))[:10], source=str(path)))
    if not out:
        raise ConfigError(f"cost.measured: {path} holds no step_costs")
    return out


def arch_key(arch: str) -> str:
    """The measured architecture whose step cost `arch` shares (ARCH_ALIASES), else `arch`."""
    return ARCH_ALIASES.get(arch, arch)


def pick(costs: list[StepCost], arch: str, transfer: str, precision: str, resolution: int,
         gpu: bool) -> tuple[StepCost, float] | None:
    """The best-matching measurement and the factor to scale it by (pixel count), or None.

    Preference: the same resolution, then the same transfer method (else full finetuning, else any), then the same
    precision (else fp32), then the newest.
    """
    cands = [c for c in costs if c.gpu == gpu and arch_key(c.arch) == arch_key(arch)]
    if not cands:
        return None
    same_precision = [c for c in cands if c.precision == precision] or [c for c in cands if c.precision == "fp32"]
    cands = same_precision or cands

    def rank(c: StepCost):
        t = 0 if c.transfer == transfer else 1 if c.transfer == "full_finetune" else 2
        return (c.resolution != resolution, t, abs(math.log(c.resolution / resolution)), _neg_date(c.date))

    best = min(cands, key=rank)
    return best, (resolution / best.resolution) ** 2


def _neg_date(date: str) -> tuple[int, ...]:
    try:
        return tuple(-int(x) for x in date.split("-"))
    except ValueError:
        return (0,)
