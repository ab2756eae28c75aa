"""PGD-AT (Madry et al., arXiv 1706.06083): cross-entropy on the attack's points only."""

from __future__ import annotations

import torch

from roli.config import ObjectiveConfig
from roli.objectives.base import OBJECTIVES, BatchMean, Forward, Objective


@OBJECTIVES.register("pgd_at")
class PGDAT(Objective):
    """Madry et al.'s adversarial training: the whole batch is replaced by the attack's points and the loss is their
    cross-entropy, mean(CE(f(x'), y)). roli's default (`train.objective: {name: pgd_at}`); no fields of its own. With
    `attack: {name: fgsm_rs}` this is Wong et al.'s fast AT, with `nfgsm` de Jorge et al.'s N-FGSM training.

    Example:
        Recipe: ``train: {objective: {name: pgd_at}}`` with ``attack: {name: pgd, steps: 7, select: last}``.
    """

    config_cls = ObjectiveConfig

    def adversarial_loss(self, forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                         mean: BatchMean) -> tuple[torch.Tensor, torch.Tensor]:
        """CE on x_adv (the clean batch is not seen), counted on x_adv."""
        logits = forward(x_adv)
        return mean.ce(logits, y), logits
