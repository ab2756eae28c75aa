"""Head initialisation: RanLI (random) or RoLI (the stage-1 adversarial linear-probe head)."""

from __future__ import annotations

import math

import torch
from torch import nn

from roli.backbones.normalize import Classifier
from roli.checkpoints import load_file
from roli.config import TransferConfig
from roli.errors import HeadError


def init_ranli(model: Classifier, config: TransferConfig) -> None:
    """The random head (RanLI, and RoLI's stage 1), as `transfer.head_init` says.

    `paper`: the reference's kaiming_normal_(mode="fan_out") weights, i.e. std sqrt(2 / num_classes), and bias
    -log(99) (the focal-loss prior 0.01, protocol B12). On ViT-B/Swin-B with few classes this is 5-25x larger than
    `torch`: PyTorch's nn.Linear default, uniform(+-1/sqrt(features)) (std 1/sqrt(3 features)), with zero bias.
    """
    head = model.head
    if not isinstance(head, nn.Linear):
        raise HeadError(f"expected a linear head, got {type(head).__name__}")
    if config.head_init == "paper":
        nn.init.kaiming_normal_(head.weight, mode="fan_out")
        nn.init.constant_(head.bias, -math.log(99))
    else:
        head.reset_parameters()
        nn.init.zeros_(head.bias)


def head_state(checkpoint: str) -> dict[str, torch.Tensor]:
    """The head weights stored in a roli checkpoint."""
    ckpt = load_file(checkpoint)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == "roli"):
        raise HeadError(f"{checkpoint} is not a roli checkpoint; a RoLI head must come from a stage-1 roli run")
    prefix = f"net.{ckpt['classifier']}."
    return {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}


def init_roli(model: Classifier, state: dict[str, torch.Tensor], source: str = "stage 1") -> None:
    """RoLI's head init (Hua et al., arXiv 2312.05716): load the stage-1 robust linear probe's head `state` (see
    `head_state`). Keys and shapes must match the model's head (same backbone and classes), else HeadError naming
    `source`."""
    head = model.head
    own = head.state_dict()
    if set(own) != set(state):
        raise HeadError(f"{source}: head keys {sorted(state)} do not match the model's {sorted(own)}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise HeadError(
                f"{source}: head {k} has shape {tuple(v.shape)} but the model needs {tuple(own[k].shape)} "
                "(different number of classes or feature size: stage 1 must use the same backbone and dataset)"
            )
    head.load_state_dict(state)
