"""A backbone's weights out of a loaded checkpoint: the state dict inside a roli checkpoint, a `{'model' |
'state_dict': ...}` wrapper or a plain state dict, loaded strictly (every key but the head must fit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from roli.errors import CheckpointError


def extract_state_dict(obj: Any, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The backbone weights inside a roli checkpoint, a `{'model'|'state_dict': ...}` wrapper or a plain state dict."""
    if isinstance(obj, dict) and obj.get("format") == "roli":
        if obj.get("lean"):
            raise CheckpointError(
                f"{path} is a lean roli checkpoint: it holds only the tensors its run trained, on top of the backbone "
                f"{obj['backbone']['file']}; make a standalone copy with `roli export RUN_DIR OUT.pt` and use that")
        return {k[len("net.") :]: v for k, v in obj["model"].items() if k.startswith("net.")}
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return extract_state_dict(obj[key], path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, or one under 'model')")


def load_backbone_weights(net: nn.Module, state: dict[str, torch.Tensor], head: str, path: str | Path) -> dict:
    """Load all weights but the classifier; any other missing/unexpected key or shape mismatch is an error."""
    state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    own = net.state_dict()
    bad_shape = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and own[k].shape != v.shape]
    if bad_shape:
        raise CheckpointError(f"{path}: shape mismatch, another architecture? {bad_shape[:5]}")
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(f"{head}.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not fit this architecture: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {result.unexpected_keys[:8]} ({len(result.unexpected_keys)})"
        )
    return {"loaded": len(state), "missing_head": sorted(result.missing_keys)}
