"""torchvision Swin (`swin_t/s/b`, V1) -> timm's SwinTransformer: the same computation under other names.

torchvision: `features.0` patch embedding (conv, permute, LayerNorm), odd `features.N` the stages, even ones
(2, 4, 6) the patch merging between them, `norm`, `head`; the MLP is `mlp.0` / `mlp.3`. timm: `patch_embed`,
`layers.S.blocks.I`, `layers.S.downsample` at the start of stage S, `norm`, `head.fc`.
"""

from __future__ import annotations

import re

from torch import nn

from roli.backbones.convert import CONVERTERS, Conversion, State, _rename, _strip_prefix, detects


@detects("torchvision_swin")
def is_torchvision_swin(keys: State) -> bool:
    """torchvision's patch-embedding conv and a stage-1 block's bias table."""
    return "features.0.0.weight" in keys and any(k.startswith("features.1.0.attn.") for k in keys)


def _stage(m: re.Match) -> str:
    n = int(m.group(1))
    return f"layers.{(n - 1) // 2}.blocks." if n % 2 else f"layers.{n // 2}.downsample."


RULES = [
    (r"^features\.0\.0\.", "patch_embed.proj."),
    (r"^features\.0\.2\.", "patch_embed.norm."),
    (r"^features\.(\d+)\.", _stage),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^head\.", "head.fc."),
]


@CONVERTERS.register("torchvision_swin")
def torchvision_swin(state: State, net: nn.Module) -> Conversion:
    """Rename the keys; the saved relative_position_index buffers are dropped (timm recomputes them)."""
    state = _strip_prefix(state)
    kept = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}
    conv = _rename(kept, "torchvision_swin", RULES)
    conv.dropped.update({k: "buffer recomputed by timm (not a weight)" for k in state if k not in kept})
    conv.imagenet_layout = True
    return conv
