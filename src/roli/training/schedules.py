"""Attack-strength schedules (`train.attack_schedule: {eps: ..., step_size: ..., steps: ...}`): a multiplier of the
target value per epoch, evaluated once at each epoch's start (0-based epoch index e) and recorded in that epoch's
history row. Validation, test and `roli eval` always attack at the target threat model.

constant (1), linear (warm-up, the "light recipe" for robust ViTs; from 0 as in Ngnawe et al. 2025), two_hinge
(piecewise linear through three points) and step_ramp (ARES-style: the value rises in equal steps over the first
epochs and never trains at 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from roli.config import AttackConfig, AttackScheduleConfig, ScheduleConfig, ThreatConfig
from roli.registry import SCHEDULES

SCHEDULES.register("constant")(ScheduleConfig)


def _interp(e: float, points: tuple[tuple[float, float], ...]) -> float:
    """Piecewise-linear through `points` (epoch, value), constant before the first and after the last."""
    if e <= points[0][0]:
        return points[0][1]
    for (e0, v0), (e1, v1) in zip(points, points[1:]):
        if e <= e1:
            return v0 + (v1 - v0) * (e - e0) / (e1 - e0)
    return points[-1][1]


@SCHEDULES.register("linear")
@dataclass(frozen=True, kw_only=True)
class LinearSchedule(ScheduleConfig):
    """Linear warm-up from `start` to 1 over `epochs` epochs: start + (1 - start) * min(e / epochs, 1) at epoch e
    (0-based). With start 0 the first epoch is clean (eps 0: no attack pass).

    Example:
        Recipe (eps from 0 to the target over 5 epochs): ``train: {attack_schedule: {eps: {name: linear, epochs: 5}}}``
    """

    name: str = "linear"
    start: float = 0.0
    epochs: float = 5.0

    def __post_init__(self) -> None:
        if not (0 <= self.start <= 1 and self.epochs > 0):
            raise ValueError(f"need 0 <= start <= 1 and epochs > 0, got start {self.start}, epochs {self.epochs}")

    def at(self, epoch: int) -> float:
        """The multiplier at epoch `epoch` (0-based)."""
        return self.start + (1 - self.start) * min(epoch / self.epochs, 1.0)


@SCHEDULES.register("two_hinge")
@dataclass(frozen=True, kw_only=True)
class TwoHingeSchedule(ScheduleConfig):
    """Piecewise linear through three (epoch, multiplier) points, constant outside them: e.g. up, then held, or up
    then down. Epochs are 0-based and increase.

    Example:
        Recipe: ``eps: {name: two_hinge, points: [[0, 0.0], [4, 1.25], [10, 1.0]]}`` (overshoot, then settle)
    """

    name: str = "two_hinge"
    points: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = ((0, 0.0), (5, 1.0), (10, 1.0))

    def __post_init__(self) -> None:
        epochs = [p[0] for p in self.points]
        if not all(a < b for a, b in zip(epochs, epochs[1:])) or min(p[1] for p in self.points) < 0:
            raise ValueError(f"points need increasing epochs and multipliers >= 0, got {[list(p) for p in self.points]}")

    def at(self, epoch: int) -> float:
        """The multiplier at epoch `epoch` (0-based)."""
        return _interp(float(epoch), self.points)


@SCHEDULES.register("step_ramp")
@dataclass(frozen=True, kw_only=True)
class StepRampSchedule(ScheduleConfig):
    """ARES-style ramp: over the first `epochs` epochs the multiplier rises in equal steps to 1, never 0:
    start + (1 - start) * min(e + 1, epochs) / epochs at epoch e (0-based); e.g. epochs 5: 0.2, 0.4, ..., 1.

    Example:
        Recipe (the PGD step over the first 5 epochs): ``attack_schedule: {step_size: {name: step_ramp, epochs: 5}}``
    """

    name: str = "step_ramp"
    start: float = 0.0
    epochs: int = 5

    def __post_init__(self) -> None:
        if not (0 <= self.start <= 1 and self.epochs >= 1):
            raise ValueError(f"need 0 <= start <= 1 and epochs >= 1, got start {self.start}, epochs {self.epochs}")

    def at(self, epoch: int) -> float:
        """The multiplier at epoch `epoch` (0-based)."""
        return self.start + (1 - self.start) * min(epoch + 1, self.epochs) / self.epochs


@dataclass(frozen=True)
class EpochAttack:
    """The training attack's settings for one epoch: its config and threat model (eps 0: no attack pass), and what
    the epoch's history row records."""

    attack: AttackConfig
    threat: ThreatConfig

    def row(self) -> dict:
        """`attack_eps`, and the step size / steps where the attack has them (0 at eps 0: no attack pass ran)."""
        out = {"attack_eps": self.threat.eps}
        for k in ("step_size", "steps"):
            if hasattr(self.attack, k):
                out[f"attack_{k}"] = getattr(self.attack, k) if self.threat.eps > 0 else type(getattr(self.attack, k))(0)
        return out


def scheduled(attack: AttackConfig, threat: ThreatConfig, schedule: AttackScheduleConfig, epoch: int) -> EpochAttack:
    """`attack` and `threat` as epoch `epoch` (0-based) trains with them. A PGD step follows eps (step_size x eps
    multiplier x step_size multiplier); steps are rounded, at least 1. All-constant schedules change nothing."""
    m_eps, m_step, m_steps = (getattr(schedule, k).at(epoch) for k in ("eps", "step_size", "steps"))
    changes = {}
    if hasattr(attack, "step_size") and m_eps * m_step != 1.0:
        changes["step_size"] = attack.step_size * m_eps * m_step
    if hasattr(attack, "steps") and m_steps != 1.0:
        changes["steps"] = max(1, round(attack.steps * m_steps))
    if changes.get("step_size", 1.0) <= 0:  # eps 0: the step does not matter (no attack pass), keep it valid
        changes["step_size"] = attack.step_size
    attack = dataclasses.replace(attack, **changes) if changes else attack
    threat = dataclasses.replace(threat, eps=threat.eps * m_eps) if m_eps != 1.0 else threat
    return EpochAttack(attack, threat)
