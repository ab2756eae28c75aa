"""Layouts timm itself converts with a model family's `checkpoint_filter_fn`: Facebook's original ConvNeXt
release (`downsample_layers`, `dwconv`, `pwconv`) and the official XCiT code (`pos_embeder`)."""

from __future__ import annotations

from timm.models import convnext, xcit
from torch import nn

from roli.backbones.convert import CONVERTERS, Conversion, State, _strip_prefix, detects


def _diff(before: State, after: State, fmt: str) -> Conversion:
    """A Conversion from timm's filter output: the keys it changed are listed as renamed (timm does not say to what)."""
    conv = Conversion(after, fmt)
    conv.renamed = {k: "(renamed by timm's filter)" for k in before if k not in after}
    return conv


@detects("convnext_fb")
def is_convnext_fb(keys: State) -> bool:
    """Facebook's ConvNeXt: `downsample_layers.0.0.weight` and `stages.0.0.dwconv.weight`."""
    return "downsample_layers.0.0.weight" in keys and "stages.0.0.dwconv.weight" in keys


@CONVERTERS.register("convnext_fb")
def convnext_fb(state: State, net: nn.Module) -> Conversion:
    """facebookresearch/ConvNeXt keys -> timm ConvNeXt, by timm's convnext.checkpoint_filter_fn."""
    state = _strip_prefix(state)
    return _diff(state, convnext.checkpoint_filter_fn(dict(state), net), "convnext_fb")


@detects("xcit", accepts=("timm",))
def is_xcit_official(keys: State) -> bool:
    """The official XCiT code's positional encoder name."""
    return any(k.startswith("pos_embeder.") for k in keys) and any(k.startswith("cls_attn_blocks.") for k in keys)


@CONVERTERS.register("xcit")
def xcit_layout(state: State, net: nn.Module) -> Conversion:
    """XCiT checkpoints (official or timm-trained, e.g. Debenedetti et al.'s) by timm's xcit.checkpoint_filter_fn."""
    state = _strip_prefix(state)
    return _diff(state, xcit.checkpoint_filter_fn(dict(state), net), "xcit")
