"""What a run can change, and lean checkpoints that store only that plus the backbone file's identity.

A model after `TransferMethod.apply` splits its state dict in two, by structure (never by key names):
- trained state, stored in every checkpoint: parameters with requires_grad; every tensor of a module the method
  injected (LoRA matrices, adapters, prompts, trainable or not: `TransferMethod.apply` tags the modules that
  `inject` added); every buffer except the running statistics of a BatchNorm whose parameters are all frozen
  (`set_train_mode` keeps it in eval mode, so they cannot change). That includes the input normalisation
  (`normalize.mean/std`, a few numbers) and the BatchNorm statistics of full finetuning or BitFit (ViT and Swin
  have no other persistent buffers).
- frozen backbone state: everything else, i.e. frozen backbone parameters and frozen BatchNorm statistics. It is
  exactly what the backbone weights file loaded, so it can be rebuilt from that file.

A lean checkpoint holds the trained state and `backbone`: the file's absolute path, SHA-256 and whether it is the
user's file (`config`) or one shipped inside roli (`package`, found again in the installed package). It is written
only when something is frozen and the backbone came from a file; otherwise (full finetuning, random init) the
whole model is stored, as it is with `run.standalone_best: true`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from roli.backbones import build_model
from roli.checkpoints import load_file
from roli.config import Config, from_dict, upgrade
from roli.errors import CheckpointError
from roli.files import sha256sum
from roli.transfer.base import build_transfer

log = logging.getLogger(__name__)

_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _frozen_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())


def _entries(model: nn.Module) -> Iterator[tuple[str, bool]]:
    """(state-dict key, trained?) for every tensor of `model.state_dict()`, in the same order."""
    added = {id(m) for m in getattr(model, "injected", ())}
    for prefix, m in model.named_modules(remove_duplicate=False):
        injected = id(m) in added
        pre = f"{prefix}." if prefix else ""
        for name, p in m._parameters.items():
            if p is not None:
                yield pre + name, injected or p.requires_grad
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                yield pre + name, injected or not (_frozen_bn(m) and name in _BN_STATS)


def trained_keys(model: nn.Module) -> list[str]:
    """State-dict keys that training can change (what a lean checkpoint stores)."""
    return [k for k, trained in _entries(model) if trained]


def frozen_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the frozen backbone (rebuilt from the backbone file, not stored in a lean checkpoint)."""
    return [k for k, trained in _entries(model) if not trained]


def backbone_identity(model: nn.Module) -> dict | None:
    """The weights file the backbone was loaded from (absolute path, SHA-256, config|package); None = no file."""
    loaded = (getattr(model, "load_report", None) or {}).get("checkpoint")
    if not loaded or not loaded.get("file") or not loaded.get("sha256"):
        return None
    return {"file": str(Path(loaded["file"]).resolve()), "sha256": loaded["sha256"],
            "source": loaded.get("source", "config")}


def model_payload(model: nn.Module, lean: bool = True) -> dict:
    """`{"model": state}` with the whole state dict, or, when `lean` and possible, only the trained state plus
    `lean: True` and `backbone` (the file that rebuilds the rest)."""
    state = model.state_dict()
    identity = backbone_identity(model) if lean else None
    frozen = set(frozen_keys(model)) if identity else set()
    if not frozen:
        return {"model": state}
    return {"model": {k: v for k, v in state.items() if k not in frozen}, "lean": True, "backbone": identity}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Load a lean (or whole) state on top of a model rebuilt with its backbone: every stored key must exist with
    its shape, and every key not stored must be frozen backbone state."""
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in trained_keys(model) if k not in state]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and own[k].shape != v.shape]
    if unexpected or missing or shapes:
        raise CheckpointError(
            f"{where} does not fit the rebuilt model (another method, architecture or roli version?): "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), trained tensors missing {missing[:5]} ({len(missing)}), "
            f"shape mismatch {shapes[:3]}")
    model.load_state_dict(state, strict=False)


def check_backbone(model: nn.Module, identity: dict, where: str | Path) -> None:
    """The backbone in `model` was loaded from the file `identity` names (same SHA-256), else CheckpointError."""
    now = backbone_identity(model)
    if now is None or now["sha256"] != identity["sha256"]:
        got = f"{now['file']} (sha256 {now['sha256'][:16]}...)" if now else "no weights file"
        raise CheckpointError(
            f"{where} was trained on the backbone {identity['file']} (sha256 {identity['sha256'][:16]}...), but the "
            f"model now holds {got}; restore the original backbone file")


def load_model(path: str, device: torch.device | str = "cpu",
               backbone: str | None = None) -> tuple[torch.nn.Module, Config]:
    """The model of a roli checkpoint (best.pt or `roli export`), rebuilt from the config stored inside it.

    A standalone file holds every weight. A lean best.pt (roli.transfer.state) holds the trained state only: the
    backbone is rebuilt from the weights file it was trained on (or `backbone`, that file at another place), whose
    SHA-256 must match the one recorded, then the transfer method is applied and the stored state loaded on top."""
    ckpt = load_file(path)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == "roli"):
        raise CheckpointError(f"{path} is not a roli checkpoint (expected best.pt of a run or a `roli export` file)")
    cfg = from_dict(Config, upgrade(ckpt["config"]), "checkpoint config")  # upgrade: roli 0.1 files still load
    if cfg.backbone.name.startswith("custom:"):
        raise CheckpointError(f"{path} holds a model given from Python ({cfg.backbone.name}); roli cannot rebuild "
                              "it: build the module again, load_state_dict(torch.load(path)['model']) into "
                              "roli.backbones.custom.from_module(module, ...) and call roli.evaluate")
    if ckpt.get("lean"):
        model = _lean_backbone(ckpt, cfg, path, backbone)
        model = build_transfer(cfg.transfer).apply(model)
        load_trained_state(model, ckpt["model"], path)
        return model.to(device).eval(), cfg
    if backbone is not None:
        log.warning("%s holds the whole model: --backbone %s is not needed and not used", path, backbone)
    # The weights come from the file itself: do not load the backbone's original checkpoint again.
    model = build_model(dataclasses.replace(cfg.backbone, pretrained=False), ckpt["num_classes"], load_weights=False)
    model = build_transfer(cfg.transfer).apply(model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def _lean_backbone(ckpt: dict, cfg: Config, path: str, backbone: str | None) -> torch.nn.Module:
    """The architecture with the backbone weights a lean checkpoint was trained on, checked by SHA-256."""
    ident = ckpt["backbone"]
    recorded = f"{ident['file']} (sha256 {ident['sha256'][:16]}...)"
    if backbone is not None:
        file: str | None = str(backbone)
        if not Path(file).is_file():
            raise CheckpointError(f"--backbone {file}: no such file (it should be the backbone {path} was built on, "
                                  f"{recorded})")
    elif ident.get("source") == "package":
        file = None  # a backbone shipped with roli: the installed package's copy (its hash is checked below)
    else:
        file = ident["file"]
        if not Path(file).is_file():
            raise CheckpointError(
                f"{path} is a lean checkpoint (only what trained) built on {recorded}, which no longer exists; pass "
                "--backbone PATH (that file at its new place; its hash is checked), or evaluate a standalone copy "
                "(`roli export RUN_DIR OUT.pt` while the file exists, or train with run.standalone_best: true)")
    if file is not None and (digest := sha256sum(file)) != ident["sha256"]:
        raise CheckpointError(
            f"{path} was built on {recorded}, but {file} now has sha256 {digest[:16]}...: another file (changed or "
            "replaced); restore the original backbone weights or pass --backbone PATH to a copy of them")
    bb = dataclasses.replace(cfg.backbone, pretrained=False, checkpoint=file or cfg.backbone.checkpoint)
    model = build_model(bb, ckpt["num_classes"])
    loaded = model.load_report["checkpoint"] or {}
    if loaded.get("sha256") != ident["sha256"]:  # the shipped file of this roli is not the one trained on
        raise CheckpointError(f"{path} was built on {recorded}, but the backbone loaded now is "
                              f"{loaded.get('file')} (sha256 {str(loaded.get('sha256'))[:16]}...); pass --backbone "
                              "PATH to the original file")
    return model
