"""The model's first layer: attacks see [0,1] pixels; normalisation and resizing happen inside the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelNormalize(nn.Module):
    def __init__(self, mean, std, input_size: int | None = None, in_chans: int | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = input_size
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_chans and x.shape[1] == 1 and self.in_chans > 1:
            x = x.expand(-1, self.in_chans, -1, -1)  # gray data on a colour backbone
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`normalize` then the (timm) network `net`; the head is `net.get_classifier()`."""

    def __init__(self, net: nn.Module, normalize: PixelNormalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @property
    def head(self) -> nn.Module:
        return self.net.get_classifier()
