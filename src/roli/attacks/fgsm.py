"""Cheap one-step training attacks: FGSM with a random start (Wong et al. 2020) and N-FGSM (de Jorge et al. 2022).

One forward and one backward per example (plus one forward for `loss: kl`), against PGD-k's k of each. Both can
suffer catastrophic overfitting (PGD accuracy falls to ~0 within an epoch while FGSM accuracy stays high); roli's
guard (`train.co_guard`, on by default for one-step attacks) watches for it. Steps and noise are fractions of the
run's eps, so an eps schedule scales them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from roli.attacks.base import ATTACKS, Attack, Outcome
from roli.attacks.pgd import attack_loss
from roli.config import AttackConfig
from roli.threat import make_ball


@dataclass(frozen=True, kw_only=True)
class FGSMRSConfig(AttackConfig):
    """FGSM-RS: a uniform random start in the eps ball, then one step of `step` x eps, projected back."""

    name: str = "fgsm_rs"
    step: float = 1.25  # x eps (Wong et al.: alpha = 1.25 eps; larger steps overfit catastrophically sooner)
    loss: Literal["ce", "margin", "kl"] = "ce"
    trainable: ClassVar[bool] = True
    one_step: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.step <= 0:
            raise ValueError(f"step is a multiple of eps and must be > 0, got {self.step}")


@dataclass(frozen=True, kw_only=True)
class NFGSMConfig(AttackConfig):
    """N-FGSM: uniform noise in `noise` x eps, one step of `step` x eps, no projection onto the eps ball."""

    name: str = "nfgsm"
    noise: float = 2.0  # x eps: the noise's half-width k (de Jorge et al.: k = 2)
    step: float = 1.0  # x eps (de Jorge et al.: alpha = eps)
    loss: Literal["ce", "margin", "kl"] = "ce"
    trainable: ClassVar[bool] = True
    one_step: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.noise < 0 or self.step <= 0:
            raise ValueError(f"need noise >= 0 and step > 0 (multiples of eps), got noise {self.noise}, step "
                             f"{self.step}")


def _one_step(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: float, step: float,
              project: bool) -> torch.Tensor:
    """x + noise (uniform in the ball of radius noise x eps, box-clipped), then one ascent step of step x eps,
    clipped to [0,1] and, if `project`, to the eps ball."""
    eps = attack.threat.eps
    loss_fn = attack_loss(attack, model, x, attack.config.loss)
    start = make_ball(attack.threat.norm, noise * eps).random_init(x, getattr(attack, "shard", None))
    start.requires_grad_(True)
    grad = attack.input_grad(loss_fn(attack.logits(model, start), y), start)
    ball = make_ball(attack.threat.norm, eps)
    x_adv = ball.step(start.detach(), grad, step * eps)
    return ball.project(x_adv, x) if project else x_adv.clamp_(0, 1)


@ATTACKS.register("fgsm_rs")
class FGSMRS(Attack):
    """FGSM with a random start (Wong et al., "Fast is better than free", arXiv 2001.03994): delta uniform in the
    eps ball, one signed-gradient step of alpha = `step` x eps (1.25 by default), projected onto the ball and the
    [0,1] box. x_adv always lies in the threat model's ball.

    Example:
        Recipe (fast adversarial training; the guard is on by default)::

            threat: {norm: linf, eps: 8/255}
            attack: {name: fgsm_rs, step: 1.25}

        Python:

        >>> x_adv = roli.make_attack("fgsm_rs", eps=8/255)(model, x, y)
    """

    config_cls = FGSMRSConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One random start, one step, projected."""
        return _one_step(self, model, x, y, 1.0, self.config.step, project=True)


@ATTACKS.register("nfgsm")
class NFGSM(Attack):
    """N-FGSM (de Jorge et al., "Make some noise", arXiv 2202.01181): x + eta with eta uniform in k x eps (k =
    `noise`, 2 by default), one step of alpha = `step` x eps (1 by default) and no projection onto the eps ball, only
    onto [0,1]: the training point may lie up to (k + step) x eps from x (L-inf per pixel, L2 per example), which is
    what keeps N-FGSM from overfitting catastrophically at large eps. A training attack: `evaluate` (for `roli eval`)
    projects its point onto the threat model's ball so the verdicts stay within it.

    Example:
        Recipe: ``attack: {name: nfgsm, noise: 2.0, step: 1.0}`` with ``threat: {norm: linf, eps: 8/255}``. Python:

        >>> x_adv = roli.make_attack("nfgsm", eps=8/255)(model, x, y)  # may leave the eps ball
    """

    config_cls = NFGSMConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Noise, one step, clipped to [0,1] only (projected onto the ball when called from `evaluate`)."""
        project = getattr(self, "_project", False)
        return _one_step(self, model, x, y, self.config.noise, self.config.step, project=project)

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, early_stop: bool = True,
                 clean_logits: torch.Tensor | None = None, shard=None) -> Outcome:
        """The generic verdicts on N-FGSM's point projected onto the eps ball (the threat model holds)."""
        self._project = True
        try:
            return super().evaluate(model, x, y, early_stop=early_stop, clean_logits=clean_logits, shard=shard)
        finally:
            self._project = False
