"""Known checkpoints (known_checkpoints.yaml): a name fixes the timm architecture, key format and normalisation.

The table is data, not code (robustbench keeps an 800-line dict literal instead). The user still supplies the
file: `backbone: {name: ares_swin_base_at, checkpoint: /path/to/file}`; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources

import yaml

from roli.config import BackboneConfig, ConfigError, from_dict
from roli.errors import CheckpointError


@dataclass(frozen=True, kw_only=True)
class KnownCheckpoint:
    """One entry of known_checkpoints.yaml: what a known checkpoint's name implies, and where to get its file."""

    name: str
    arch: str  # timm architecture
    format: str  # roli.backbones.convert.CONVERTERS name
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pretrain_eps: float | None = None  # L-inf radius of the robust pretraining; None = standard training
    robust: bool = False
    paper_key: str | None = None  # the reference code's DATA.FEATURE name
    source: str = ""  # where users obtain the file
    file: str | None = None  # the file's name as distributed
    sha256: str | None = None  # full hash or a prefix; None = unknown (then nothing is checked)


@functools.cache
def known_checkpoints() -> dict[str, KnownCheckpoint]:
    """The table, read once and checked strictly (a broken entry is a bug in roli: RuntimeError)."""
    path = resources.files("roli.backbones") / "known_checkpoints.yaml"
    table = yaml.safe_load(path.read_text()) or {}
    try:
        return {name: from_dict(KnownCheckpoint, {"name": name, **entry}, f"known_checkpoints.yaml:{name}")
                for name, entry in table.items()}
    except ConfigError as e:  # a broken table is a bug in roli, reported with its location
        raise RuntimeError(str(e)) from None


def resolve_known(cfg: BackboneConfig, need_file: bool = True) -> tuple[BackboneConfig, KnownCheckpoint | None]:
    """Replace a known-checkpoint name by its architecture and format; the file must be given (unless the weights
    come from elsewhere, e.g. a roli checkpoint being re-evaluated)."""
    entry = known_checkpoints().get(cfg.name)
    if entry is None:
        return cfg, None
    if not cfg.checkpoint and need_file:
        raise CheckpointError(
            f"backbone {cfg.name!r} is a known checkpoint: pass its file with `backbone.checkpoint: /path` "
            f"(obtain it from: {entry.source}). For a random-init model of the same architecture use "
            f"`backbone.name: {entry.arch}`."
        )
    fmt = entry.format if cfg.format == "auto" else cfg.format
    return dataclasses.replace(cfg, name=entry.arch, format=fmt), entry
