"""Known checkpoints (known_checkpoints.yaml): a name fixes the timm architecture, key format, activation,
normalisation, preprocessing and the threat model the weights were pretrained against.

The table is data, not code (robustbench keeps an 800-line dict literal instead). The user still supplies the
file: `backbone: {name: ares_swin_base_at, checkpoint: /path/to/file}`; nothing is downloaded. A file given by its
architecture name is still recognised when its sha256 or its distributed file name matches an entry, so a
mismatching architecture (a GELU file in a ReLU ResNet) is an error instead of silently wrong logits.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from roli.config import BackboneConfig, ConfigError, ThreatConfig, from_dict
from roli.errors import CheckpointError


@dataclass(frozen=True, kw_only=True)
class KnownCheckpoint:
    """One entry of known_checkpoints.yaml: what a known checkpoint's name implies, and where to get its file."""

    name: str
    arch: str  # timm architecture (or a roli-registered timm model, e.g. convnext_base_convstem)
    format: str  # roli.backbones.convert.CONVERTERS name
    mean: tuple[float, ...]
    std: tuple[float, ...]
    activation: str | None = None  # what the weights were trained with (relu | gelu | quick_gelu); built so if needed
    pretrain_threat: ThreatConfig | None = None  # the robust pretraining's norm and eps; None = standard training
    robust: bool = False
    input_size: int | None = None  # the crop the weights were trained and evaluated at
    interpolation: str | None = None  # the resize used at evaluation (bicubic for most transformers)
    crop_pct: float | None = None  # evaluation crop / resize ratio (0.875 = resize 256, crop 224)
    paper_key: str | None = None  # the reference code's DATA.FEATURE name
    source: str = ""  # where users obtain the file
    license: str | None = None  # the weights' licence as published; None = not stated where we could check
    file: str | None = None  # the file's name as distributed
    sha256: str | None = None  # full hash or a prefix; None = unknown (then nothing is checked)

    @property
    def pretrain_eps(self) -> float | None:
        """The pretraining radius alone (older readers; `pretrain_threat` also has the norm)."""
        return self.pretrain_threat.eps if self.pretrain_threat else None

    def threat(self) -> dict | None:
        """The pretraining threat model as results.json records it: {norm, eps} or None."""
        return dataclasses.asdict(self.pretrain_threat) if self.pretrain_threat else None

    def preprocessing(self) -> dict:
        """The evaluation preprocessing the weights expect (only what the entry states)."""
        out = {"input_size": self.input_size, "interpolation": self.interpolation, "crop_pct": self.crop_pct}
        return {k: v for k, v in out.items() if v is not None}


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


def identify(arch: str, path: str | Path, digest: str | None) -> KnownCheckpoint | None:
    """The entry a file loaded by architecture name is (its sha256 matches, or its name is the entry's distributed
    file name); an entry for another architecture is an error naming both, so no known file loads into the wrong
    network. None when the file is not in the table."""
    name = Path(path).name
    for entry in known_checkpoints().values():
        by_hash = bool(entry.sha256 and digest and digest.startswith(entry.sha256.lower()))
        if not (by_hash or (entry.file and entry.file == name)):
            continue
        if entry.arch != arch:
            how = "sha256" if by_hash else "file name"
            raise CheckpointError(f"{name} is the known checkpoint {entry.name} (by its {how}), trained as "
                                  f"{entry.arch} ({entry.activation or 'its own'} activation) but backbone.name is "
                                  f"{arch}: use `backbone.name: {entry.name}` (or rename the file if it is another)")
        return entry
    return None
