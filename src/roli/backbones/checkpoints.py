"""Safe checkpoint I/O: `weights_only=True` loads, strict key checks, atomic writes that never clobber."""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A weights file is missing, unreadable, unsafe, or does not fit the architecture."""


def load_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a local weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):
            raise CheckpointError(f"{path} is not a torch checkpoint (corrupt, or e.g. a saved HTML page): {e}") from None
        raise CheckpointError(
            f"{path} cannot be loaded with weights_only=True (it needs code to unpickle: {str(e).splitlines()[0]}). "
            "roli does not run code from checkpoints; re-save it as a plain state_dict with torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or another format?): {e}") from None


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


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same folder, then rename: a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; keep the user's usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_new(obj: Any, path: str | Path) -> None:
    """Save a file the user keeps (an export): refuse to overwrite an existing one."""
    if Path(path).exists():
        raise FileExistsError(f"{path} exists; roli does not overwrite it. Choose another path or remove it.")
    atomic_save(obj, path)
