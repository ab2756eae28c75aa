"""The objective interface: per batch, the loss to minimise and the logits whose accuracy is `train_acc`.

An objective never runs the attack itself: the training loop runs it (in eval mode, input gradients only, as roli
does for PGD-AT; TRADES's reference crafts x' in eval mode too) and hands the objective the clean batch `x`, the
attack's points `x_adv` (None when the epoch's eps is 0 or training is standard: then every objective is the
clean cross-entropy) and a `forward` that runs the training step's model under the run's precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from roli.config import ObjectiveConfig
from roli.registry import OBJECTIVES

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BatchMean:
    """The global batch's mean of per-example losses. In one process a plain mean; under DDP (`shard`, a
    roli.distributed.Shard) the local sum x world size / global batch size, because DistributedDataParallel averages
    the ranks' gradients: every objective's step is then the global batch's mean, as in one process."""

    shard: object | None = None
    world_size: int = 1

    def __call__(self, per_example: torch.Tensor) -> torch.Tensor:
        """Mean of a (N,) tensor of per-example losses over the global batch."""
        if self.shard is None:
            return per_example.mean()
        return per_example.sum() * (self.world_size / self.shard.size)

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy's global-batch mean, computed exactly as roli always has (PGD-AT's numbers stay bit-equal)."""
        if self.shard is None:
            return F.cross_entropy(logits.float(), y)
        return F.cross_entropy(logits.float(), y, reduction="sum") * (self.world_size / self.shard.size)


def kl_rows(p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per example KL(p || softmax(logits_q)), summed over classes; differentiable in both arguments."""
    return F.kl_div(F.log_softmax(logits_q.float(), 1), p, reduction="none").sum(1)


class Objective:
    """Base of a registered training objective; `config_cls` is its config class (only its own fields)."""

    config_cls: type[ObjectiveConfig] = ObjectiveConfig

    def __init__(self, config: ObjectiveConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config

    @property
    def needs_attack(self) -> bool:
        """Whether the loss uses x_adv at all (TRADES with beta 0 does not: no attack pass is run)."""
        return True

    def loss(self, forward: Forward, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor,
             mean: BatchMean) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss to minimise, logits counted for train_acc). `x_adv` None: the clean cross-entropy."""
        if x_adv is None:
            logits = forward(x)
            return mean.ce(logits, y), logits
        return self.adversarial_loss(forward, x, x_adv, y, mean)

    def adversarial_loss(self, forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                         mean: BatchMean) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's own loss on the clean batch and the attack's points (subclasses)."""
        raise NotImplementedError


def build_objective(config: ObjectiveConfig) -> Objective:
    """The registered objective for `config` (`train.objective`).

    Example:
        >>> obj = build_objective(roli.load_config(data={"train": {"objective": {"name": "trades"}},
        ...                                                "attack": {"loss": "kl"}}).train.objective)
        >>> loss, logits = obj.loss(model, x, x_adv, y, BatchMean())
    """
    return OBJECTIVES.get(config.name)(config)
