"""The catastrophic-overfitting guard (`train.co_guard`): one-step adversarial training (FGSM, FGSM-RS, N-FGSM at
large eps or step) can collapse within an epoch: the model becomes robust to the one-step attack only, and PGD
accuracy falls to ~0 while FGSM accuracy stays high or rises (Wong et al. 2020, de Jorge et al. 2022).

Signal: after every epoch, the validation split is attacked by `eval.attack` (PGD, already computed for model
selection) and by FGSM at the same eps. A collapse is PGD accuracy < `ratio` x FGSM accuracy (default 0.5) *and*
FGSM - PGD >= `gap` points (default 20): the ratio alone would fire on a weak early model (FGSM 30%, PGD 12%), the
gap alone on a strong one; a healthy robust model has PGD close to FGSM (e.g. 48% vs 55%), a collapsed one PGD ~0
with FGSM high. Epochs trained below the target eps (an eps warm-up, `train.attack_schedule.eps`) are not judged:
there PGD at the target trails FGSM without any collapse.

Action: the collapsed epoch is discarded (its row is kept in the event), the weights, optimiser, LR schedule and
fp16 scaler go back to the last good epoch (kept in memory, and in checkpoint.pt on disk), and that epoch is trained
again with a stronger attack (`on_collapse: stronger`: a one-step attack becomes PGD-2 with step eps/2 and a random
start, PGD-k becomes PGD-2k) or training stops at the last good epoch (`stop`; also once `max_rollbacks` is used up).
The guard's state (events, current attack, whether it stopped) is part of checkpoint.pt, so a resumed run goes on
exactly as an uninterrupted one; results.json carries it as `co_guard`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

from roli.config import AttackConfig, CoGuardConfig, ThreatConfig, attack_config, from_dict, to_dict

log = logging.getLogger(__name__)


def one_step(attack: AttackConfig) -> bool:
    """Whether the attack takes one gradient step (fgsm, fgsm_rs, nfgsm, PGD with steps 1): the ones that collapse."""
    return bool(getattr(type(attack), "one_step", False)) or attack.name == "fgsm" or getattr(attack, "steps", 0) == 1


def enabled(guard: CoGuardConfig, attack: AttackConfig, adversarial: bool) -> bool:
    """`co_guard.enabled`, with None (auto) = on for one-step training attacks."""
    if not adversarial:
        return False
    return one_step(attack) if guard.enabled is None else guard.enabled


def collapsed(pgd_acc: float, fgsm_acc: float, guard: CoGuardConfig) -> bool:
    """The documented rule: PGD accuracy < ratio x FGSM accuracy and at least `gap` points below it."""
    return pgd_acc < guard.ratio * fgsm_acc and fgsm_acc - pgd_acc >= guard.gap


def stronger(attack: AttackConfig, threat: ThreatConfig) -> AttackConfig:
    """The next training attack after a collapse: a one-step attack -> PGD-2 (step eps/2, random start, the last
    iterate), PGD-k -> PGD-2k (step min(eps/2, 2.5 eps / 2k)); the loss is kept (TRADES's kl stays kl)."""
    loss = getattr(attack, "loss", "ce")
    steps = 2 if one_step(attack) else 2 * attack.steps
    step = min(threat.eps / 2, 2.5 * threat.eps / steps) if threat.eps > 0 else getattr(attack, "step_size", 1.0)
    return attack_config("pgd", steps=steps, step_size=step, random_start=True, loss=loss if loss else "ce",
                         select="last")


@dataclass
class Guard:
    """The guard of one run: its settings, the current training attack, the events so far and whether it stopped
    training. `good` is the last good epoch's state (model, optimiser, schedule, scaler), in memory."""

    config: CoGuardConfig
    attack: AttackConfig
    events: list[dict] = field(default_factory=list)
    stopped: bool = False
    note: str | None = None  # what the next history row says about the last rollback
    good: dict | None = None

    def check(self, row: dict, threat: ThreatConfig) -> bool:
        """Whether the epoch of `row` collapsed; if so records the event and decides what comes next (the caller
        rolls back). `row` needs `val_robust` and `val_fgsm`."""
        if not collapsed(row["val_robust"], row["val_fgsm"], self.config):
            return False
        event = {"epoch": row["epoch"], "val_robust": row["val_robust"], "val_fgsm": row["val_fgsm"],
                 "val_clean": row["val_clean"], "attack": to_dict(self.attack),
                 "rolled_back_to_epoch": row["epoch"] - 1}
        rollbacks = len(self.events)
        if self.config.on_collapse == "stop" or rollbacks >= self.config.max_rollbacks:
            event["action"] = "stop"
            self.stopped = True
            log.warning("co_guard: catastrophic overfitting in epoch %d (val PGD %.1f%% vs FGSM %.1f%%): training "
                        "stops at epoch %d (%s)", row["epoch"], row["val_robust"], row["val_fgsm"], row["epoch"] - 1,
                        "co_guard.on_collapse: stop" if self.config.on_collapse == "stop" else
                        f"co_guard.max_rollbacks {self.config.max_rollbacks} used up")
        else:
            self.attack = stronger(self.attack, threat)
            event["action"] = "stronger"
            event["new_attack"] = to_dict(self.attack)
            log.warning("co_guard: catastrophic overfitting in epoch %d (val PGD %.1f%% vs FGSM %.1f%%): back to "
                        "epoch %d, training on with %s", row["epoch"], row["val_robust"], row["val_fgsm"],
                        row["epoch"] - 1, event["new_attack"])
        self.events.append(event)
        return True

    def state(self) -> dict:
        """What checkpoint.pt keeps (plain values, loadable with weights_only=True)."""
        return {"attack": to_dict(self.attack), "events": copy.deepcopy(self.events), "stopped": self.stopped,
                "note": self.note}

    def load(self, state: dict | None) -> None:
        """The state saved by `state()` (a checkpoint without one: the guard as it starts)."""
        if state:
            self.attack = from_dict(AttackConfig, state["attack"], "co_guard.attack")
            self.events, self.stopped, self.note = list(state["events"]), bool(state["stopped"]), state["note"]

    def summary(self) -> dict:
        """results.json's `co_guard`: settings, events, the attack training ended with, whether it stopped early."""
        return {"enabled": True, "config": to_dict(self.config), "events": copy.deepcopy(self.events),
                "final_attack": to_dict(self.attack), "stopped": self.stopped}


def snapshot(model, optimizer, scheduler, scaler) -> dict:
    """A deep copy of what a rollback restores: every model tensor, the optimiser, LR schedule and fp16 scaler."""
    return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None})


def restore(good: dict, model, optimizer, scheduler, scaler) -> None:
    """Put the snapshot `good` back (copies, so the snapshot stays usable for a later rollback)."""
    good = copy.deepcopy(good)
    model.load_state_dict(good["model"])
    optimizer.load_state_dict(good["optimizer"])
    scheduler.load_state_dict(good["scheduler"])
    if scaler is not None and good["scaler"] is not None:
        scaler.load_state_dict(good["scaler"])
