"""PGD (Madry et al., arXiv 1706.06083) with restarts and a per-example worst case; FGSM is its 1-step case.

Losses: `ce`, the CW-style `margin`, and `kl` (TRADES's inner maximisation, Zhang et al. 2019: the KL divergence
from the clean prediction, a training-only loss that ignores the label)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks.base import ATTACKS, Attack, Outcome, attack_mode
from roli.config import AttackConfig, ThreatConfig
from roli.errors import ConfigError
from roli.precision import Precision
from roli.threat import make_ball


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW-style margin: best wrong logit minus true logit (> 0 means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def kl_to_clean(p_clean: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per example KL(p_clean || softmax(logits)), summed over classes (TRADES's criterion_kl before batchmean)."""
    return F.kl_div(F.log_softmax(logits.float(), 1), p_clean, reduction="none").sum(1)


LOSSES = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
    "margin": margin_loss,
}


def attack_loss(attack: Attack, model: nn.Module, x: torch.Tensor, loss: str):
    """The per-example loss `(logits, y) -> (N,)` an attack ascends. `kl` needs the clean prediction: one forward
    without gradient, in the attack's eval mode (as TRADES's reference crafts x' in eval mode)."""
    if loss != "kl":
        return LOSSES[loss]
    with torch.no_grad():
        p_clean = F.softmax(attack.logits(model, x).float(), 1)
    return lambda logits, y: kl_to_clean(p_clean, logits)


@dataclass(frozen=True, kw_only=True)
class PGDConfig(AttackConfig):
    """Projected gradient descent; eps and norm come from the run's `threat` section."""

    name: str = "pgd"
    steps: int = 10  # the paper: 7 for training (Config.attack's default), 10 for validation and test
    step_size: float = 2 / 255  # in [0,1] pixel units (L2: the step's L2 length)
    random_start: bool = True  # uniform in the ball
    restarts: int = 1  # per-example worst case over restarts
    loss: Literal["ce", "margin", "kl"] = "ce"  # kl: TRADES's training attack only (needs random_start)
    # best: per example, an iterate that misclassifies, else the highest-loss one (evaluation's worst case; the
    # reference picked one iterate per batch, protocol B4); last: the last iterate (Madry's PGD-AT, the training
    # default: measured 6-10% cheaper per training epoch than `best`, benchmarks/run.py)
    select: Literal["best", "last"] = "best"
    trainable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if self.loss == "kl" and not self.random_start:
            raise ValueError("loss kl needs random_start: true (the KL to the clean prediction has zero gradient at "
                             "the clean input, so PGD would never move)")

    def warnings(self, threat: ThreatConfig) -> list[str]:
        """A step larger than eps, or steps too few to reach the ball's boundary (both legal, both weak)."""
        out = []
        if threat.eps > 0 and self.step_size > threat.eps:
            out.append(f"PGD step_size {self.step_size:.4g} exceeds eps {threat.eps:.4g}: each step overshoots the "
                       "ball and the projection undoes most of it (the paper: step 2/255 for eps 8/255)")
        if self.steps * self.step_size < threat.eps:
            out.append(f"PGD steps x step_size = {self.steps * self.step_size:.4g} < eps {threat.eps:.4g}: the "
                       "attack cannot reach the ball's boundary from the clean input (a weak attack)")
        return out


@dataclass(frozen=True, kw_only=True)
class FGSMConfig(AttackConfig):
    """FGSM: one signed-gradient step of size eps from the clean input."""

    name: str = "fgsm"
    loss: Literal["ce", "margin"] = "ce"
    trainable: ClassVar[bool] = True


def _better(wrong: torch.Tensor, loss: torch.Tensor, best_wrong: torch.Tensor, best_loss: torch.Tensor) -> torch.Tensor:
    """Per example, whether a candidate beats the current worst case: misclassified first (AutoAttack's worst case),
    then the higher loss. A misclassified worst case is only ever replaced by another misclassified point."""
    return (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))


@ATTACKS.register("pgd")
class PGD(Attack):
    """PGD (Madry et al., arXiv 1706.06083): `steps` ascent steps of `step_size` on the loss (`ce` or the CW-style
    `margin`), each projected onto the L-inf or L2 ball of the run's `threat` and the [0,1] box, from a uniform
    random start in the ball (`random_start`), best of `restarts`.

    Keeps, per example, the iterate that misclassifies, else the one with the highest loss (`select: best`; the
    reference picks one iterate for the whole batch by the mean loss, protocol B4), or the last iterate
    (`select: last`, Madry's PGD-AT). x: (N, C, H, W) in [0,1], y: (N,) labels; x_adv has x's shape and dtype.

    Example:
        Recipe (training PGD-7 and PGD-10 for validation and test)::

            threat: {norm: linf, eps: 8/255}
            attack: {name: pgd, steps: 7, step_size: 2/255, select: last}
            eval: {attack: {name: pgd, steps: 10, step_size: 2/255, restarts: 1}}

        Python:

        >>> attack = roli.make_attack("pgd", eps=8/255, steps=10, step_size=2/255)
        >>> x_adv = attack(model, x, y)
    """

    config_cls = PGDConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attack every example for every step and restart (the training path; see `evaluate` for early stop)."""
        cfg = self.config
        ball = make_ball(self.threat.norm, self.threat.eps)
        loss_fn = attack_loss(self, model, x, cfg.loss)
        best_x = x.clone()
        best_wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)

        def keep(x_cand: torch.Tensor, logits: torch.Tensor) -> None:
            loss = loss_fn(logits.detach().float(), y)
            wrong = logits.argmax(1) != y
            better = _better(wrong, loss, best_wrong, best_loss)
            best_x[better] = x_cand[better].detach()
            best_wrong[better], best_loss[better] = wrong[better], loss[better]

        for _ in range(cfg.restarts):
            x_adv = ball.random_init(x, getattr(self, "shard", None)) if cfg.random_start else x.clone()
            for _ in range(cfg.steps):
                x_adv.requires_grad_(True)
                logits = self.logits(model, x_adv)
                grad = self.input_grad(loss_fn(logits, y), x_adv)
                if cfg.select == "best":
                    keep(x_adv, logits)
                x_adv = ball.project(ball.step(x_adv.detach(), grad, cfg.step_size), x)
            if cfg.select == "last" and cfg.restarts == 1:
                return x_adv  # Madry's PGD-AT: the last iterate, with no forward pass that nothing would use
            with torch.no_grad():
                keep(x_adv, self.logits(model, x_adv))
        return best_x

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, early_stop: bool = True,
                 clean_logits: torch.Tensor | None = None, shard=None) -> Outcome:
        """Per-example verdicts (`Outcome`) of this PGD, with the clean input as candidate 0 (it is in the ball, so a
        misclassified clean input is never robust).

        `early_stop`: attack only examples that are still robust. A misclassified example can never become robust
        again (the worst case prefers misclassified points), so the verdicts, hence the robust accuracy, are exactly
        those of `early_stop=False`, and the cost follows the still-robust fraction: examples misclassified clean
        are not attacked; with `select: best` each step runs on the examples no iterate has broken yet (the batch is
        indexed, so the forward/backward shrink); each restart runs only on the examples robust after all earlier
        restarts. With `select: last` the in-restart early stop would not be exact (a later iterate can be correct
        again), so there only the first two apply. The random starts are drawn for the whole batch in both modes, so
        every example gets the same noise and the RNG stream is unchanged. The returned x_adv may differ between the
        modes for broken examples, but it misclassifies in both. Exactness assumes a row's output does not depend on
        the other rows in the batch (true for roli's models on CPU; kernels chosen by batch size could in principle
        flip a borderline example).
        """
        self.precision.check_device(x.device)
        cfg = self.config
        if cfg.loss == "kl":
            raise ConfigError("PGD with loss kl is a training attack (TRADES); evaluate with loss ce or margin")
        ball = make_ball(self.threat.norm, self.threat.eps)
        loss_fn = LOSSES[cfg.loss]
        x = x.detach()
        with attack_mode(model):
            with torch.no_grad():
                if clean_logits is None:
                    clean_logits = self.logits(model, x)
                clean_logits = clean_logits.detach()
                clean = clean_logits.argmax(1) == y
                best_x, best_wrong, best_loss = x.clone(), ~clean, loss_fn(clean_logits.float(), y)

            def keep(idx: torch.Tensor, x_cand: torch.Tensor, logits: torch.Tensor) -> None:
                y_i = y[idx]
                loss = loss_fn(logits.detach().float(), y_i)
                wrong = logits.argmax(1) != y_i
                better = _better(wrong, loss, best_wrong[idx], best_loss[idx])
                sel = idx[better]
                best_x[sel] = x_cand[better].detach()
                best_wrong[sel], best_loss[sel] = wrong[better], loss[better]

            every = torch.arange(len(x), device=x.device)
            per_step = early_stop and cfg.select == "best"
            with torch.enable_grad():
                for _ in range(cfg.restarts):
                    # the whole batch (or global batch, under DDP): the same draws with and without early stop
                    start = ball.random_init(x, shard) if cfg.random_start else x
                    idx = every[~best_wrong] if early_stop else every
                    if len(idx) == 0:
                        continue
                    x_adv, x_0, y_0 = start[idx], x[idx], y[idx]
                    for _ in range(cfg.steps):
                        x_adv.requires_grad_(True)
                        logits = self.logits(model, x_adv)
                        grad = self.input_grad(loss_fn(logits, y_0), x_adv)
                        if cfg.select == "best":
                            keep(idx, x_adv, logits)
                        x_adv = ball.project(ball.step(x_adv.detach(), grad, cfg.step_size), x_0)
                        if per_step:
                            alive = ~best_wrong[idx]
                            if not alive.all():
                                idx, x_adv, x_0, y_0 = idx[alive], x_adv[alive], x_0[alive], y_0[alive]
                            if len(idx) == 0:
                                break
                    if len(idx):
                        with torch.no_grad():
                            keep(idx, x_adv, self.logits(model, x_adv))
        return Outcome(best_x, clean, ~best_wrong)


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """FGSM (Goodfellow et al., arXiv 1412.6572): one step of size eps from the clean input, no random start.

    L-inf: x + eps * sign(grad), clipped to [0,1]; L2: a step of L2 length eps along the gradient. Run as a
    1-step PGD, so it shares PGD's per-example verdicts and early stop. Its config has only `loss` (`ce` or
    `margin`); eps is the run's `threat.eps`. Cheap enough to train with (`attack: {name: fgsm}`).

    Example:
        Recipe: ``eval: {attack: {name: fgsm}}``, with ``threat: {norm: linf, eps: 8/255}``. Python:

        >>> x_adv = roli.make_attack("fgsm", eps=8/255)(model, x, y)
    """

    config_cls = FGSMConfig

    def __init__(self, config: FGSMConfig, threat: ThreatConfig, precision: Precision | None = None) -> None:
        Attack.__init__(self, config, threat, precision)
        self.config = PGDConfig(steps=1, step_size=threat.eps or 1.0, random_start=False, loss=config.loss)
