"""PGD (Madry et al., arXiv 1706.06083) with restarts and a per-example worst case; FGSM is its 1-step case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks.base import ATTACKS, Attack
from roli.config import AttackConfig, ThreatConfig
from roli.threat import make_ball


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW-style margin: best wrong logit minus true logit (> 0 means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


LOSSES = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
    "margin": margin_loss,
}


@dataclass(frozen=True, kw_only=True)
class PGDConfig(AttackConfig):
    """Projected gradient descent; eps and norm come from the run's `threat` section."""

    name: str = "pgd"
    steps: int = 10  # the paper: 7 for training (Config.attack's default), 10 for validation and test
    step_size: float = 2 / 255  # in [0,1] pixel units (L2: the step's L2 length)
    random_start: bool = True  # uniform in the ball
    restarts: int = 1  # per-example worst case over restarts
    loss: Literal["ce", "margin"] = "ce"
    select: Literal["best", "last"] = "best"  # per-example worst iterate (protocol B4 fix), or the last one
    trainable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")

    def warnings(self, threat: ThreatConfig) -> list[str]:
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


@ATTACKS.register("pgd")
class PGD(Attack):
    """L-inf/L2 PGD. Keeps, per example, the iterate that misclassifies, else the one with the highest loss
    (the reference picks one iterate for the whole batch by the mean loss, protocol B4)."""

    config_cls = PGDConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        ball = make_ball(self.threat.norm, self.threat.eps)
        loss_fn = LOSSES[cfg.loss]
        best_x = x.clone()
        best_wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)

        def keep(x_cand: torch.Tensor, logits: torch.Tensor) -> None:
            # Misclassified first (AutoAttack's worst case), then the higher loss.
            loss = loss_fn(logits.detach().float(), y)
            wrong = logits.argmax(1) != y
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best_x[better] = x_cand[better].detach()
            best_wrong[better], best_loss[better] = wrong[better], loss[better]

        for _ in range(cfg.restarts):
            x_adv = ball.random_init(x, getattr(self, "shard", None)) if cfg.random_start else x.clone()
            for _ in range(cfg.steps):
                x_adv.requires_grad_(True)
                logits = model(x_adv)
                loss = loss_fn(logits, y)
                (grad,) = torch.autograd.grad(loss.sum(), x_adv)
                if cfg.select == "best":
                    keep(x_adv, logits)
                x_adv = ball.project(ball.step(x_adv.detach(), grad, cfg.step_size), x)
            with torch.no_grad():
                logits = model(x_adv)
            if cfg.select == "best" or cfg.restarts > 1:
                keep(x_adv, logits)
            else:
                best_x = x_adv
        return best_x


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """FGSM (Goodfellow et al., arXiv 1412.6572): one full-size step from the clean input."""

    config_cls = FGSMConfig

    def __init__(self, config: FGSMConfig, threat: ThreatConfig) -> None:
        Attack.__init__(self, config, threat)
        self.config = PGDConfig(steps=1, step_size=threat.eps or 1.0, random_start=False, loss=config.loss)
