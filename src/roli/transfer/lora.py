"""LoRA (Hu et al., 2022, arXiv 2106.09685) on the attention query and value projections, as in the reference
(protocol §5).

timm fuses q, k and v into one `qkv` nn.Linear (ViT `Attention.qkv`, Swin `WindowAttention.qkv`), whose output
is [q | k | v] along the last dimension. peft cannot target a q or v *slice* of that fused layer cleanly, so this
file holds a small wrapper instead: `LoRAQKV` keeps the original Linear as `base_layer` (frozen) and adds, for
each target t in `targets`, a low-rank update on t's slice only:

    out = base_layer(x) + [scale·B_q A_q drop(x), 0, scale·B_v A_v drop(x)],   scale = alpha / rank

The k slice is exactly base_layer's output (no addition at all) unless "k" is a target. Init: A kaiming_uniform
(a=√5), B = 0, so the model is unchanged at init. The reference's RoLI-LoRA configs also zero A (ZEROINIT), which
makes every LoRA gradient exactly 0 (protocol B1); that variant is deliberately not offered.

Trainable: the A/B matrices of every LoRAQKV (ViT-B/16: 589,824; Swin-B: 770,048 = 64·Σ block dims) plus the head.
`merge_lora(net)` (or `LoRAQKV.merge()`) folds the update into plain nn.Linear layers for deployment; a merged model
has the original timm state-dict keys, so a roli checkpoint is always saved unmerged.

LoRA dropout (default 0.1) is active in train mode. The reference never applied it, because it forced the encoder
into eval mode (protocol B8); set `dropout: 0` to match that.

Backbones: timm VisionTransformer (incl. vit_tiny_28) and SwinTransformer. ResNets and other backbones without
fused-qkv attention raise UnsupportedBackbone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from roli.config import TransferConfig
from roli.transfer.base import TRANSFER, TransferMethod, UnsupportedBackbone

# The attention modules whose `qkv` Linear is called as `self.qkv(x)` and split as [q | k | v].
QKV_OWNERS: tuple[type[nn.Module], ...] = (Attention, WindowAttention)
SUPPORTED = "timm VisionTransformer (Attention.qkv) and SwinTransformer (WindowAttention.qkv) backbones"
_SLOT = {"q": 0, "k": 1, "v": 2}


@dataclass(frozen=True, kw_only=True)
class LoraConfig(TransferConfig):
    """The `lora` method's fields: rank, scale, dropout and which of q, k, v are adapted."""

    name: str = "lora"
    rank: int = 16  # r: rank of each low-rank update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.1  # dropout on the LoRA input, train mode only (the reference's was never active, B8)
    targets: tuple[Literal["q", "k", "v"], ...] = ("q", "v")  # slices of the fused qkv projection to adapt

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be a non-empty list of distinct q, k, v; got {list(self.targets)}")
        if any(t not in _SLOT for t in self.targets):
            raise ValueError(f"targets must be among ['q', 'k', 'v'], got {list(self.targets)}")


class LoRAQKV(nn.Module):
    """A fused qkv nn.Linear (`base_layer`, frozen) plus low-rank updates on the chosen q/k/v slices."""

    def __init__(self, base_layer: nn.Linear, rank: int = 16, alpha: float = 16.0, dropout: float = 0.0,
                 targets: Iterable[str] = ("q", "v")) -> None:
        super().__init__()
        if base_layer.out_features % 3:
            raise ValueError(f"a fused qkv Linear needs out_features divisible by 3, got {base_layer.out_features}")
        self.base_layer = base_layer
        self.targets = tuple(sorted(targets, key=_SLOT.__getitem__))
        self.rank = rank
        self.scale = alpha / rank
        self.slice_dim = base_layer.out_features // 3
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.ParameterDict({t: nn.Parameter(torch.empty(rank, base_layer.in_features, **kw))
                                        for t in self.targets})
        self.lora_B = nn.ParameterDict({t: nn.Parameter(torch.zeros(self.slice_dim, rank, **kw))
                                        for t in self.targets})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def lora_parameters(self) -> list[nn.Parameter]:
        """The A and B matrices of every target: what trains."""
        return [*self.lora_A.values(), *self.lora_B.values()]

    def delta_weight(self, target: str) -> torch.Tensor:
        """scale * B @ A: the update of `target`'s (slice_dim, in_features) block of the qkv weight."""
        return self.scale * self.lora_B[target] @ self.lora_A[target]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base_layer(x) with each target's low-rank update added to its q, k or v slice."""
        parts = list(self.base_layer(x).split(self.slice_dim, dim=-1))
        h = self.drop(x)
        for t in self.targets:
            parts[_SLOT[t]] = parts[_SLOT[t]] + self.scale * F.linear(F.linear(h, self.lora_A[t]), self.lora_B[t])
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (dropout aside); this module is left unchanged."""
        base = self.base_layer
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        weight = base.weight.clone()
        for t in self.targets:
            s = _SLOT[t] * self.slice_dim
            weight[s:s + self.slice_dim] += self.delta_weight(t)
        merged.weight.copy_(weight)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        merged.weight.requires_grad_(base.weight.requires_grad)
        if base.bias is not None:
            merged.bias.requires_grad_(base.bias.requires_grad)
        return merged

    def extra_repr(self) -> str:
        """Targets, rank and scale, for print(model)."""
        return f"targets={list(self.targets)}, rank={self.rank}, scale={self.scale:g}"


def qkv_owners(net: nn.Module) -> list[nn.Module]:
    """Attention modules of a supported type whose `qkv` is still a plain nn.Linear."""
    return [m for m in net.modules() if isinstance(m, QKV_OWNERS) and isinstance(getattr(m, "qkv", None), nn.Linear)]


def merge_lora(net: nn.Module) -> nn.Module:
    """Replace every LoRAQKV in `net` by its merged nn.Linear (in place); returns `net`."""
    for m in list(net.modules()):
        if isinstance(getattr(m, "qkv", None), LoRAQKV):
            m.qkv = m.qkv.merge()
    return net


@TRANSFER.register("lora")
class LoRA(TransferMethod):
    """LoRA (Hu et al., arXiv 2106.09685): the frozen fused qkv projection of every attention layer gets a trainable
    low-rank update (alpha / rank) * B A on its q and v slices (`targets`); B starts at zero, so the model equals the
    pretrained one at step 0. The A/B matrices and the head train; `merge_lora` folds the update in for deployment.

    Backbones: timm VisionTransformer and SwinTransformer; others raise UnsupportedBackbone.

    Example:
        Recipe: ``transfer: {name: lora, rank: 8}`` (defaults: rank 16, alpha 16, dropout 0.1, targets [q, v]).
        Python:

        >>> from roli.transfer.lora import LoraConfig
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model = roli.build_transfer(LoraConfig(rank=8)).apply(model)  # 17,674 trainable
    """

    config_cls = LoraConfig
    config: LoraConfig

    def check(self, net: nn.Module) -> None:
        """Raise UnsupportedBackbone if `net` has no supported attention with a fused qkv Linear."""
        if not qkv_owners(net):
            raise UnsupportedBackbone(
                f"lora supports {SUPPORTED}; {type(net).__name__} has no fused qkv attention to adapt"
            )

    def inject(self, net: nn.Module) -> None:
        """Replace every attention's qkv Linear by a LoRAQKV around it."""
        c = self.config
        for owner in qkv_owners(net):
            owner.qkv = LoRAQKV(owner.qkv, rank=c.rank, alpha=c.alpha, dropout=c.dropout, targets=c.targets)

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        """The A/B matrices of every LoRAQKV."""
        return [p for m in net.modules() if isinstance(m, LoRAQKV) for p in m.lora_parameters()]
