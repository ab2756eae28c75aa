"""Bottleneck adapters (Houlsby et al., arXiv 1902.00751) after each transformer block's MLP, in Pfeiffer et al.'s
placement (protocol §5, "Adapter").

Every module with an `.mlp` whose `fc1` is an nn.Linear (timm ViT `Block`, Swin `SwinTransformerBlock`) gets its
MLP wrapped: `AdapterMlp` keeps the original MLP as `base_layer` (frozen) and returns

    m + up(GELU(down(m))),   m = base_layer(h),   bottleneck = dim // reduction   (ViT-B: 96; Swin-B: 16..128)

so the block computes x + drop_path(ls(m + adapter(m))). The reference applies drop_path before the adapter
instead; the two agree whenever drop_path_rate is 0 (its setting for adapters).

Init (`adapter_init`; the field cannot be called `init`, which already selects the head's RanLI/RoLI init):
- "standard" (default): down = kaiming_uniform (PyTorch's Linear default), up weight and bias = 0, so the model
  is unchanged at init and every adapter parameter gets a gradient.
- "zero": everything zero, the reference's init (protocol B2). Only `up.bias` ever receives a gradient, so each
  adapter degenerates into one learned bias vector per block. For comparison with the reference only.

Trainable: the down/up layers of every Adapter (2·dim·b + b + dim per block) plus the head.
Backbones: every module with an MLP block (capability `mlp_block`: an `.mlp` whose fc1/fc2 are Linear or 1x1 Conv2d):
timm VisionTransformer (incl. vit_tiny_28), SwinTransformer, XCiT (its XCA blocks and its class-attention blocks,
whose MLP runs on the class token only) and ConvNeXt. ConvNeXt's MLP runs channels-last with Linear layers (the
default); with `conv_mlp=True` it is a 1x1-conv MLP on (B, C, H, W), and the adapter then runs on the channels of
every pixel (the same Linear adapter, the tensor permuted to channels-last and back). ResNets have no MLP blocks:
UnsupportedBackbone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from roli.config import TransferConfig
from roli.errors import ConfigError
from roli.transfer.base import TRANSFER, TransferMethod
from roli.transfer.capabilities import mlp_blocks, mlp_dim


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(TransferConfig):
    """The `adapter` method's fields: bottleneck size (as a reduction of the block width) and init."""

    name: str = "adapter"
    reduction: int = 8  # bottleneck = block dim // reduction
    adapter_init: Literal["standard", "zero"] = "standard"  # zero = the reference's degenerate all-zero init (B2)

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {self.reduction}")


class Adapter(nn.Module):
    """down (dim -> bottleneck), GELU, up (bottleneck -> dim); returns the update only (no residual)."""

    def __init__(self, dim: int, bottleneck: int, init: str = "standard", device=None, dtype=None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        if init == "zero":
            for p in self.parameters():
                nn.init.zeros_(p)
        elif init == "standard":
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:
            raise ValueError(f"unknown adapter init {init!r}; choose 'standard' or 'zero'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """up(GELU(down(x))), of x's shape."""
        return self.up(self.act(self.down(x)))


class AdapterMlp(nn.Module):
    """`base_layer` (a block's original MLP) followed by a residual bottleneck adapter."""

    def __init__(self, base_layer: nn.Module, reduction: int = 8, init: str = "standard") -> None:
        super().__init__()
        dim = mlp_dim(base_layer)
        if dim is None:
            raise ValueError(f"{type(base_layer).__name__} has no Linear or 1x1-conv fc1/fc2 of equal in/out width to adapt")
        if dim // reduction < 1:
            raise ConfigError(f"transfer.reduction {reduction} leaves no bottleneck for a block of width {dim}: the "
                              f"bottleneck is width // reduction; give a reduction of at most {dim} (e.g. 8)")
        self.base_layer = base_layer
        w = base_layer.fc1.weight
        self.channels_first = isinstance(base_layer.fc1, nn.Conv2d)  # a 1x1-conv MLP on (B, C, H, W)
        self.adapter = Adapter(dim, dim // reduction, init, device=w.device, dtype=w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """m + adapter(m), m the original MLP's output (a conv MLP's channels are moved last for the adapter)."""
        m = self.base_layer(x)
        if self.channels_first:
            return m + self.adapter(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return m + self.adapter(m)


@TRANSFER.register("adapter")
class AdapterMethod(TransferMethod):
    """Adapters (Houlsby et al., arXiv 1902.00751): a trainable bottleneck MLP (dim -> dim // reduction -> dim,
    GELU) added residually after every MLP block; the backbone stays frozen, the adapters and the
    head train. With the default `standard` init the up-projection starts at zero, so the adapted model equals the
    pretrained one at step 0.

    Backbones: any with MLP blocks (ViT, Swin, XCiT, ConvNeXt; see the module docstring); others (ResNet) raise
    UnsupportedBackbone.

    Example:
        Recipe: ``transfer: {name: adapter, reduction: 8}`` (ViT-B: bottleneck 96). Python:

        >>> from roli.transfer.adapter import AdapterConfig
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model = roli.build_transfer(AdapterConfig(reduction=8)).apply(model)  # 18,250 trainable
    """

    config_cls = AdapterConfig
    config: AdapterConfig
    requires = ("mlp_block",)

    def inject(self, net: nn.Module) -> None:
        """Wrap every block's MLP in an AdapterMlp."""
        for block in mlp_blocks(net):
            block.mlp = AdapterMlp(block.mlp, self.config.reduction, self.config.adapter_init)

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        """The down/up weights and biases of every Adapter."""
        return [p for m in net.modules() if isinstance(m, Adapter) for p in m.parameters()]
