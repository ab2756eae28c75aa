"""LoRA (Hu et al., 2022, arXiv 2106.09685) on attention q/v (the reference, protocol §5), or on any other linear
layer `targets` names: the attention's k, its output proj, the MLP's fc1/fc2, 1x1 convs (roli.transfer.lora_targets).

timm fuses q, k and v into one `qkv` nn.Linear (ViT `Attention.qkv`, Swin `WindowAttention.qkv`, XCiT `XCA.qkv`),
whose output is [q | k | v] along the last dimension. peft cannot target a q or v *slice* of that fused layer cleanly,
so this file holds a small wrapper instead: `LoRAQKV` keeps the original Linear as `base_layer` (frozen) and adds, for
each slice target t, a low-rank update on t's slice only:

    out = base_layer(x) + [scale·B_q A_q drop(x), 0, scale·B_v A_v drop(x)],   scale = alpha / rank

The k slice is exactly base_layer's output (no addition at all) unless "k" is a target. Every other target (separate
q/k/v Linears, a whole qkv, proj, fc1, fc2, 1x1 convs) is a `LoRALayer`: base_layer(x) + scale·B A drop(x) on the
whole layer (for a 1x1 conv, per pixel, with the conv's stride). Init: A kaiming_uniform (a=√5), B = 0, so the model
is unchanged at init. The reference's RoLI-LoRA configs also zero A (ZEROINIT), which makes every LoRA gradient
exactly 0 (protocol B1); that variant is deliberately not offered.

Trainable: the A/B matrices of every LoRA module (q, v on ViT-B/16: 589,824; Swin-B: 770,048 = 64·Σ block dims) plus
the head. `merge_lora(net)` (or `.merge()` of a module) folds each update into a plain nn.Linear / nn.Conv2d for
deployment; a merged model has the original timm state-dict keys, so a roli checkpoint is always saved unmerged.

LoRA dropout (default 0.1) is active in train mode. The reference never applied it, because it forced the encoder
into eval mode (protocol B8); set `dropout: 0` to match that.

Backbones: default targets [q, v] on ViT, Swin and XCiT (the same q,v LoRA, parameters and state-dict keys as
before targets were configurable), [mlp] on ConvNeXt, [pointwise] on ResNet; a backbone with none of these layers,
or a target it lacks, raises UnsupportedBackbone naming what it has.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from roli.config import TransferConfig
from roli.transfer.base import TRANSFER, TransferMethod, UnsupportedBackbone
from roli.transfer.capabilities import QKV_OWNERS, fused_qkv  # noqa: F401  (QKV_OWNERS: imported from here)
from roli.transfer.lora_targets import SLICES, TARGETS, available, default_targets, sites

_SLOT = {"q": 0, "k": 1, "v": 2}
Target = Literal["q", "k", "v", "qkv", "proj", "fc1", "fc2", "mlp", "pointwise"]


@dataclass(frozen=True, kw_only=True)
class LoraConfig(TransferConfig):
    """The `lora` method's fields: rank, scale, dropout and which layers are adapted (`targets`)."""

    name: str = "lora"
    rank: int = 16  # r: rank of each low-rank update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.1  # dropout on the LoRA input, train mode only (the reference's was never active, B8)
    # Which layers get LoRA: q, k, v (attention projections; slices of a fused qkv), qkv (the whole projection),
    # proj (attention output), fc1, fc2, mlp (= fc1 + fc2 of every MLP block, Linear or 1x1 conv), pointwise (every
    # 1x1 conv). Unset = the backbone's default: [q, v] with attention (ViT, Swin, XCiT; the reference), else [mlp]
    # (ConvNeXt: its blocks' dense layers), else [pointwise] (ResNet: the bottleneck 1x1 convs and shortcuts).
    targets: tuple[Target, ...] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.targets is None:
            return
        t = list(self.targets)
        if not t or len(set(t)) != len(t) or any(x not in TARGETS for x in t):
            raise ValueError(f"targets must be a non-empty list of distinct names among {list(TARGETS)} (or unset "
                             f"for the backbone's default); got {t}")
        for whole, parts in (("qkv", SLICES), ("mlp", ("fc1", "fc2"))):
            if whole in t and set(parts) & set(t):
                raise ValueError(f"targets {t}: {whole} already covers {', '.join(parts)}; give one or the other")


class LoRAQKV(nn.Module):
    """A fused qkv nn.Linear (`base_layer`, frozen) plus low-rank updates on the chosen q/k/v slices.

    Read by exporters: `targets` (sorted q, k, v), `lora_A[t]` (rank, in_features) and `lora_B[t]` (slice_dim, rank)
    per target t (state-dict keys `qkv.lora_A.q`, ...), `rank`, `alpha`, `scale` (= alpha / rank), `slice_dim`
    (out_features // 3), `drop` (the input dropout) and `delta_weight(t)` = scale · B_t @ A_t, t's weight rows.
    """

    def __init__(self, base_layer: nn.Linear, rank: int = 16, alpha: float = 16.0, dropout: float = 0.0,
                 targets: Iterable[str] = ("q", "v")) -> None:
        super().__init__()
        if base_layer.out_features % 3:
            raise ValueError(f"a fused qkv Linear needs out_features divisible by 3, got {base_layer.out_features}")
        self.base_layer = base_layer
        self.targets = tuple(sorted(targets, key=_SLOT.__getitem__))
        self.rank, self.alpha = rank, alpha
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


class LoRALayer(nn.Module):
    """A frozen nn.Linear or 1x1 nn.Conv2d (`base_layer`) plus one low-rank update of the whole layer:
    base_layer(x) + scale · B A drop(x) (a conv's update per pixel, with its stride).

    Read by exporters: `lora_A` (rank, in) and `lora_B` (out, rank) are 2-D parameters for both kinds (a conv's
    are its 1x1 kernels without the unit dims; state-dict keys `<layer>.lora_A`, `<layer>.lora_B`), `rank`, `alpha`,
    `scale` (= alpha / rank), `conv` (True for a Conv2d), `drop` (the input dropout) and `delta_weight()` = scale ·
    B @ A, shaped like base_layer.weight.
    """

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, rank: int = 16, alpha: float = 16.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = isinstance(base_layer, nn.Conv2d)
        if self.conv and (base_layer.kernel_size != (1, 1) or base_layer.groups != 1):
            raise ValueError(f"LoRA adapts 1x1 convs with groups 1 only, got {base_layer}")
        w = base_layer.weight
        n_in, n_out = w.shape[1], w.shape[0]
        self.base_layer = base_layer
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(rank, n_in, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(n_out, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def lora_parameters(self) -> list[nn.Parameter]:
        """A and B: what trains."""
        return [self.lora_A, self.lora_B]

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A, shaped like base_layer.weight (out, in) or (out, in, 1, 1)."""
        return (self.scale * self.lora_B @ self.lora_A).reshape(self.base_layer.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base_layer(x) plus the low-rank update of the dropped-out input."""
        h = self.drop(x)
        if self.conv:
            a, b = self.lora_A[:, :, None, None], self.lora_B[:, :, None, None]
            return self.base_layer(x) + self.scale * F.conv2d(F.conv2d(h, a, stride=self.base_layer.stride), b)
        return self.base_layer(x) + self.scale * F.linear(F.linear(h, self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """A copy of base_layer with the update added to its weight (same function, dropout aside)."""
        merged = copy.deepcopy(self.base_layer)
        merged.weight.add_(self.delta_weight())
        return merged

    def extra_repr(self) -> str:
        """Rank and scale, for print(model)."""
        return f"rank={self.rank}, scale={self.scale:g}"


LORA_MODULES = (LoRAQKV, LoRALayer)


def merge_lora(net: nn.Module) -> nn.Module:
    """Replace every LoRA module (LoRAQKV, LoRALayer) in `net` by its merged layer (in place); returns `net`."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LORA_MODULES):
                setattr(parent, name, child.merge())
    return net


@TRANSFER.register("lora")
class LoRA(TransferMethod):
    """LoRA (Hu et al., arXiv 2106.09685): frozen linear layers get a trainable low-rank update (alpha / rank) * B A;
    by default the q and v slices of every attention's fused qkv projection (the reference), on ConvNeXt its MLPs'
    fc1/fc2, on ResNet its 1x1 convs (`targets` chooses). B starts at zero, so the model equals the pretrained one
    at step 0. The A/B matrices and the head train; `merge_lora` folds the update in for deployment.

    Backbones: any with attention, MLP blocks or 1x1 convs; others raise UnsupportedBackbone, as does a target the
    backbone lacks (naming the targets it has).

    Example:
        Recipe: ``transfer: {name: lora, rank: 8}`` (defaults: rank 16, alpha 16, dropout 0.1, targets unset = the
        backbone's default); ``transfer: {name: lora, targets: [q, v, fc1, fc2]}``. Python:

        >>> from roli.transfer.lora import LoraConfig
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model = roli.build_transfer(LoraConfig(rank=8)).apply(model)  # 17,674 trainable
    """

    config_cls = LoraConfig
    config: LoraConfig
    requires = (("attention_qv", "mlp_block", "pointwise_conv"),)

    def check(self, net: nn.Module) -> None:
        """Refuse a backbone with nothing LoRA adapts, or without one of the configured targets."""
        super().check(net)
        missing = [t for t in self.config.targets or () if t not in available(net)]
        if missing:
            raise UnsupportedBackbone(
                f"lora: transfer.targets {missing} not found in {type(net).__name__}, which has {available(net)}; "
                f"choose among those, or leave targets unset for its default {list(default_targets(net))}")

    def inject(self, net: nn.Module) -> None:
        """Wrap every fused qkv in a LoRAQKV (slice targets) and every other targeted layer in a LoRALayer."""
        c = self.config
        targets = c.targets or default_targets(net)
        slices = [t for t in targets if t in SLICES]
        owners = fused_qkv(net) if slices else []
        found = [site for t in targets for site in sites(net, t)]  # all found before anything is wrapped
        for owner in owners:
            owner.qkv = LoRAQKV(owner.qkv, rank=c.rank, alpha=c.alpha, dropout=c.dropout, targets=slices)
        done: set[tuple[int, str]] = set()
        for parent, name in found:
            if (id(parent), name) not in done:  # e.g. pointwise and fc1 name the same conv
                done.add((id(parent), name))
                setattr(parent, name, LoRALayer(getattr(parent, name), rank=c.rank, alpha=c.alpha, dropout=c.dropout))

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        """The A/B matrices of every LoRA module."""
        return [p for m in net.modules() if isinstance(m, LORA_MODULES) for p in m.lora_parameters()]
