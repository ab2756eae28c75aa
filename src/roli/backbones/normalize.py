"""The model's first layer: attacks see [0,1] pixels; normalisation and resizing happen inside the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelNormalize(nn.Module):
    """Inputs in [0,1] pixels -> what the network expects: gray repeated to its channels, resized (bilinear) to
    `input_size`, then (x - mean) / std. Inside the model, so every attack's eps is in pixel units."""
    def __init__(self, mean, std, input_size: int | None = None, in_chans: int | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = input_size
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x of shape (batch, channels, height, width) in [0,1] -> the network's normalised input."""
        if self.in_chans and x.shape[1] == 1 and self.in_chans > 1:
            x = x.expand(-1, self.in_chans, -1, -1)  # gray data on a colour backbone
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def head_name(net: nn.Module) -> str:
    """The classifier's module path inside a network: its own `head_name` (roli's ModuleNet), else timm's
    `pretrained_cfg["classifier"]` ("head", "fc", "head.fc", ...), else "head"."""
    return getattr(net, "head_name", None) or (getattr(net, "pretrained_cfg", None) or {}).get("classifier", "head")


class Classifier(nn.Module):
    """`normalize` then the (timm) network `net`: the model every attack sees, taking [0,1] pixels.

    It carries what roli knows about it, declared here rather than patched on: the head's path inside `net`, how
    the backbone was built (results.json's `backbone`), the transfer method applied and the modules that method
    added (whose whole state is the method's, see roli.transfer.state).

    Example:
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model.head_name, model.method, model(torch.rand(2, 1, 28, 28)).shape
        ('head', None, torch.Size([2, 10]))
    """

    head_name: str  # the head's module path inside `net` (see `head_name`)
    load_report: dict  # architecture, checkpoint file and hash, normalisation and its source: results.json's backbone
    method: str | None  # the transfer method `TransferMethod.apply` applied; None before
    injected: list[nn.Module]  # the modules that method added (LoRA, adapters, prompts and their children)

    def __init__(self, net: nn.Module, normalize: PixelNormalize, load_report: dict | None = None) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.head_name = head_name(net)
        self.load_report = load_report or {}
        self.method = None
        self.injected = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for [0,1] pixels x of shape (batch, channels, height, width)."""
        return self.net(self.normalize(x))

    @property
    def head(self) -> nn.Module:
        """The classification head (`net.get_classifier()`): trained by every transfer method."""
        return self.net.get_classifier()
