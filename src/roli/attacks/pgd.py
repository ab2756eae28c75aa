"""PGD (Madry et al., arXiv 1706.06083) with restarts and a per-example worst case; FGSM is its 1-step case."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks.base import ATTACKS, Attack
from roli.config import AttackConfig
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


@ATTACKS.register("pgd")
class PGD(Attack):
    """L-inf/L2 PGD. Keeps, per example, the iterate that misclassifies, else the one with the highest loss
    (the reference picks one iterate for the whole batch by the mean loss, spec B4)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        ball = make_ball(cfg.norm, cfg.eps)
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
            x_adv = ball.random_init(x) if cfg.random_start else x.clone()
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

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(dataclasses.replace(config, steps=1, step_size=config.eps or 1.0, random_start=False))
