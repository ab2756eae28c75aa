"""TRADES (Zhang et al., arXiv 1901.08573): clean cross-entropy plus beta x KL(f(x) || f(x'))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from roli.config import ObjectiveConfig
from roli.objectives.base import OBJECTIVES, BatchMean, Forward, Objective, kl_rows


@dataclass(frozen=True, kw_only=True)
class TradesConfig(ObjectiveConfig):
    """TRADES's trade-off `beta` (the reference: 6.0 on CIFAR-10; 1.0 favours clean accuracy)."""

    name: str = "trades"
    beta: float = 6.0
    attack_loss: ClassVar[str | None] = "kl"  # x' maximises the KL to the clean prediction: attack.loss: kl

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@OBJECTIVES.register("trades")
class Trades(Objective):
    """TRADES: loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), the KL summed over classes and divided
    by the batch size (the reference's `batchmean`), gradients through both f(x) and f(x'). x' comes from the
    training attack with `loss: kl` (the config refuses another loss), which roli crafts in eval mode as the reference
    does; roli's PGD starts uniformly in the eps ball where the reference adds 0.001 x N(0, 1) noise. Two training
    forwards per step (clean and x'), each through the model as is (BatchNorm sees the two batches apart, as in
    the reference). beta = 0 is clean training exactly: no attack pass, no second forward. train_acc counts x'.

    Example:
        Recipe::

            train: {objective: {name: trades, beta: 6.0}}
            attack: {name: pgd, steps: 10, step_size: 2/255, loss: kl, select: last}
    """

    config_cls = TradesConfig

    @property
    def needs_attack(self) -> bool:
        """No attack for beta 0."""
        return self.config.beta > 0

    def adversarial_loss(self, forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                         mean: BatchMean) -> tuple[torch.Tensor, torch.Tensor]:
        """CE on x, beta x batch-mean KL from f(x) to f(x')."""
        logits = forward(x)
        logits_adv = forward(x_adv)
        robust = kl_rows(F.softmax(logits.float(), 1), logits_adv)
        return mean.ce(logits, y) + self.config.beta * mean(robust), logits_adv
