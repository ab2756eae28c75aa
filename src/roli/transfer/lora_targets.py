"""Where LoRA goes: the layers each `transfer.targets` entry names in a backbone, and the default per backbone.

Targets (LoraConfig.targets):
- q, k, v: slices of a fused qkv Linear (wrapped once, as a LoRAQKV, with all chosen slices) and the q/k/v Linears
  of attentions that have separate projections (XCiT's class attention: each a LoRALayer);
- qkv: the whole fused qkv Linear as one layer (peft's choice on timm), or every separate q, k and v Linear;
- proj: the attention output projection (nn.Linear);
- fc1, fc2: the MLP blocks' layers (nn.Linear, or ConvNeXt's 1x1 convs with conv_mlp); mlp = both;
- pointwise: every 1x1 nn.Conv2d (groups 1, no padding) except the classifier: ResNet's bottleneck conv1/conv3 and
  projection shortcuts (also a conv MLP's fc1/fc2 and XCiT's positional-encoding projection).
Default (targets unset): [q, v] on a backbone with attention (ViT, Swin, XCiT: the reference's choice), else [mlp]
on one with MLP blocks (ConvNeXt: fc1 and fc2 hold nearly all of a block's weights; its only other layer is the 7x7
depthwise conv), else [pointwise] (ResNet: the bottleneck 1x1 convs, a per-pixel Linear each).
"""

from __future__ import annotations

from torch import nn

from roli.transfer.capabilities import classifier, fused_qkv, mlp_blocks, pointwise, separate_qkv

TARGETS = ("q", "k", "v", "qkv", "proj", "fc1", "fc2", "mlp", "pointwise")
SLICES = ("q", "k", "v")
Site = tuple[nn.Module, str]  # (parent module, attribute name) of a layer to wrap


def sites(net: nn.Module, target: str) -> list[Site]:
    """The layers `target` adapts with a LoRALayer, as (parent, attribute); a fused qkv's q/k/v slices are not
    here (LoRA wraps those owners in a LoRAQKV)."""
    if target in SLICES:
        return [(m, target) for m in separate_qkv(net)]
    if target == "qkv":
        return [(m, "qkv") for m in fused_qkv(net)] + [(m, a) for m in separate_qkv(net) for a in SLICES]
    if target == "proj":
        return [(m, "proj") for m in fused_qkv(net) + separate_qkv(net) if type(getattr(m, "proj", None)) is nn.Linear]
    if target in ("fc1", "fc2"):
        return [(b.mlp, target) for b in mlp_blocks(net)]
    if target == "mlp":
        return sites(net, "fc1") + sites(net, "fc2")
    if target == "pointwise":
        head = classifier(net)
        return [(parent, name) for parent in net.modules() for name, child in parent.named_children()
                if pointwise(child) and child is not head]
    raise ValueError(f"unknown LoRA target {target!r}; choose from {list(TARGETS)}")


def has(net: nn.Module, target: str) -> bool:
    """Whether `net` has a layer (or a fused qkv slice) `target` adapts."""
    return bool(sites(net, target) or (target in SLICES and fused_qkv(net)))


def available(net: nn.Module) -> list[str]:
    """The targets `net` has, in TARGETS order."""
    return [t for t in TARGETS if has(net, t)]


def default_targets(net: nn.Module) -> tuple[str, ...]:
    """The targets LoRA uses when the config names none: [q, v], else [mlp], else [pointwise]; () = none fits."""
    for choice in (("q", "v"), ("mlp",), ("pointwise",)):
        if all(has(net, t) for t in choice):
            return choice
    return ()
