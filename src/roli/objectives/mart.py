"""MART (Wang et al., ICLR 2020, "Improving adversarial robustness requires revisiting misclassified examples")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from roli.config import ObjectiveConfig
from roli.objectives.base import OBJECTIVES, BatchMean, Forward, Objective, kl_rows


@dataclass(frozen=True, kw_only=True)
class MartConfig(ObjectiveConfig):
    """MART's weight `lam` of the misclassification-aware KL term (the paper's beta; 5.0 on CIFAR-10 ResNet-18)."""

    name: str = "mart"
    lam: float = 5.0

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")


def mart_rows(logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-example MART loss, with the reference code's constants: boosted CE on x' (CE + -log(1 - p'_k), k the most
    likely wrong class of x') + lam * KL(p(x) || p(x')) * (1 - p_y(x))."""
    p_adv = F.softmax(logits_adv.float(), 1)
    top2 = p_adv.argsort(1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.cross_entropy(logits_adv.float(), y, reduction="none") + \
        F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong, reduction="none")
    p_clean = F.softmax(logits.float(), 1)
    p_true = p_clean.gather(1, y[:, None]).squeeze(1)
    return bce + lam * kl_rows(p_clean, logits_adv) * (1.0000001 - p_true)


@OBJECTIVES.register("mart")
class Mart(Objective):
    """MART: mean over the batch of BCE(f(x'), y) + lam * KL(softmax f(x) || softmax f(x')) * (1 - p_y(x)), the
    boosted cross-entropy up-weighting examples whose clean prediction is wrong. x' comes from the training attack
    on CE (as the reference's PGD; `loss: kl` is refused), crafted in eval mode; two training forwards per step.
    train_acc counts x'.

    Example:
        Recipe: ``train: {objective: {name: mart, lam: 5.0}}`` with ``attack: {name: pgd, steps: 10}``.
    """

    config_cls = MartConfig

    def adversarial_loss(self, forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                         mean: BatchMean) -> tuple[torch.Tensor, torch.Tensor]:
        """MART on the clean batch and x'."""
        logits = forward(x)
        logits_adv = forward(x_adv)
        return mean(mart_rows(logits, logits_adv, y, self.config.lam)), logits_adv
