"""Local checkpoint locations: a weights file, a timm `local-dir:` folder, or a Hugging Face cache folder
(`models--timm--NAME/` or one of its `snapshots/<rev>/`), read offline: no hub call is ever made.

A folder's `config.json` (timm: architecture, pretrained_cfg mean/std, model_args) or `open_clip_config.json`
(open_clip: quick_gelu, preprocess_cfg mean/std) is read as the file's own metadata and checked against the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roli.checkpoints import load_file
from roli.errors import CheckpointError

WEIGHTS = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
CONFIGS = ("config.json", "open_clip_config.json")


@dataclass(frozen=True)
class Located:
    """Where a checkpoint's weights are, and the metadata files that came with them (empty for a bare file)."""

    weights: Path
    config: dict[str, Any] = field(default_factory=dict)  # the folder's config.json / open_clip_config.json
    config_file: str | None = None


def _snapshot(root: Path) -> Path:
    """The snapshot of a Hugging Face cache root that `refs/main` names, else its only one."""
    ref = root / "refs" / "main"
    if ref.is_file():
        return root / "snapshots" / ref.read_text().strip()
    snaps = sorted(p for p in (root / "snapshots").iterdir() if p.is_dir())
    if len(snaps) != 1:
        raise CheckpointError(f"{root} holds {len(snaps)} snapshots and no refs/main: pass the one to use, "
                              f"e.g. {root / 'snapshots' / (snaps[0].name if snaps else '<rev>')}")
    return snaps[0]


def _read_config(folder: Path) -> tuple[dict, str | None]:
    for name in CONFIGS:
        path = folder / name
        if path.is_file():
            try:
                return json.loads(path.read_text()), name
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{path}: not readable JSON ({e}); repair or remove it") from None
    return {}, None


def locate(spec: str | Path) -> Located:
    """The weights file `spec` names: a file, or a folder (a `local-dir:` prefix allowed) holding one of WEIGHTS."""
    text = str(spec)
    path = Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text).expanduser()
    if not path.is_dir():
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a local weights file or "
                                  "folder (roli never downloads)")
        return Located(path)
    folder = _snapshot(path) if (path / "snapshots").is_dir() else path
    weights = next((folder / n for n in WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} holds no weights file (looked for {', '.join(WEIGHTS)}); a Hugging Face "
                              "cache folder whose files were never downloaded is empty: fetch them first, then retry")
    config, name = _read_config(folder)
    return Located(weights, config, name)


def read_weights(path: Path) -> Any:
    """A checkpoint's contents: safetensors files with safetensors.torch.load_file, others via roli.checkpoints."""
    if path.suffix != ".safetensors":
        return load_file(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file as load_safetensors

    try:
        return load_safetensors(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): {e}") from None


def config_metadata(config: dict, name: str | None) -> dict:
    """What a folder's config says about the weights: architecture, activation, mean/std, preprocessing."""
    if name == "open_clip_config.json":
        model_cfg, pre = config.get("model_cfg") or {}, config.get("preprocess_cfg") or {}
        out = {"activation": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"}
        if pre.get("mean") and pre.get("std"):
            out.update(mean=tuple(pre["mean"]), std=tuple(pre["std"]))
        return out
    pc = config.get("pretrained_cfg") or {}
    out = {k: v for k, v in {"arch": config.get("architecture"),
                             "activation": (config.get("model_args") or {}).get("act_layer")}.items() if v}
    if pc.get("mean") and pc.get("std"):
        out.update(mean=tuple(pc["mean"]), std=tuple(pc["std"]))
    pre = {k: pc[k] for k in ("input_size", "interpolation", "crop_pct") if pc.get(k) is not None}
    if pre:
        out["preprocessing"] = pre
    return out
