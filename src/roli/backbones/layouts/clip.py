"""CLIP vision towers in OpenAI's layout (as OpenAI's and open_clip's files, TeCoA and FARE save them) -> timm's
VisionTransformer, through timm's own conversion (`_convert_openai_clip`, what timm's checkpoint filter uses).

A whole CLIP file's text tower is dropped; a vision-tower-only file (`conv1.weight`, `class_embedding`, ...
without `visual.`) is read too. The tower's output projection (`proj`) becomes timm's head, which roli replaces by
the task's head. QuickGELU vs GELU is not in the keys: OpenAI's weights and what is fine-tuned from them (TeCoA,
FARE) need the `*_clip_quickgelu_*` architectures; their known entries say so, and open_clip_config.json's
`quick_gelu` is checked when the folder has one.
"""

from __future__ import annotations

from timm.models.vision_transformer import _convert_openai_clip
from torch import nn

from roli.backbones.convert import CONVERTERS, Conversion, State, _strip_prefix, detects


@detects("open_clip")
def is_clip(keys: State) -> bool:
    """OpenAI's visual-tower key names, with or without the `visual.` prefix."""
    return "visual.class_embedding" in keys or ("class_embedding" in keys and "conv1.weight" in keys)


@CONVERTERS.register("open_clip")
def open_clip(state: State, net: nn.Module) -> Conversion:
    """The visual tower converted by timm; text-tower keys are dropped and reported."""
    state = _strip_prefix(state)
    if "visual.class_embedding" not in state:
        state = {f"visual.{k}": v for k, v in state.items()}
    out = _convert_openai_clip(state, net)
    conv = Conversion(out, "open_clip")
    conv.dropped = {k: "CLIP text tower (not a vision weight)" for k in state if not k.startswith("visual.")}
    conv.renamed = {k: k[len("visual."):] for k in state if k.startswith("visual.")}
    return conv
