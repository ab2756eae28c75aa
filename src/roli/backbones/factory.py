"""Build a backbone from its config: architecture, normalisation and local weights (never a download)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from roli.backbones.convert import load_checkpoint
from roli.backbones.normalize import Classifier, PixelNormalize, head_name
from roli.config import DROP_KNOBS, BackboneConfig
from roli.errors import BackboneError
from roli.registry import BACKBONES

# A factory returns (net, defaults): defaults hold mean, std and optionally a packaged `checkpoint`.
BackboneFactory = Callable[[BackboneConfig, int | None], tuple[nn.Module, dict[str, Any]]]

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def drop_kwargs(cfg: BackboneConfig) -> dict[str, float]:
    """The dropout knobs that are set (> 0): only those are passed, since architectures differ in which they have."""
    return {k: getattr(cfg, k) for k in DROP_KNOBS if getattr(cfg, k) > 0}


def _timm_factory(cfg: BackboneConfig, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    if not timm.is_model(cfg.name):
        raise BackboneError(
            f"unknown backbone {cfg.name!r}: not a roli backbone {BACKBONES.names()} nor a timm architecture "
            "(see timm.list_models())"
        )
    kwargs = drop_kwargs(cfg)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        net = timm.create_model(cfg.name, pretrained=False, **kwargs)
    except TypeError as e:  # an architecture without one of the dropout knobs
        raise BackboneError(f"{cfg.name} does not accept {sorted(drop_kwargs(cfg))} ({e}); set the knobs it has "
                            "(ViT: proj/attn/pos_drop_rate, drop_path_rate; Swin: proj/attn_drop_rate, "
                            "drop_path_rate; ResNet: drop_rate, drop_path_rate) or leave them at 0") from None
    pc = net.pretrained_cfg
    return net, {"mean": tuple(pc.get("mean", IMAGENET["mean"])), "std": tuple(pc.get("std", IMAGENET["std"]))}


def build_model(cfg: BackboneConfig, num_classes: int | None = None, load_weights: bool = True) -> Classifier:
    """The architecture with its normalisation; `load_weights=False` skips the pretrained file (the caller loads a
    full roli checkpoint instead, so `roli eval` works even if the original backbone file has moved)."""
    hub = ("hf-hub:", "hf_hub:", "http://", "https://", "timm/")
    if cfg.pretrained or (cfg.checkpoint or "").startswith(hub) or cfg.name.startswith(hub):
        raise BackboneError(
            "roli never downloads weights (and offline it cannot). Download the checkpoint yourself, then pass "
            "its local path: `backbone.checkpoint: /path/to/weights.pth` (or --set backbone.checkpoint=PATH)."
        )
    from roli.backbones.known import resolve_known

    cfg, known = resolve_known(cfg, need_file=load_weights)  # a known name -> its timm architecture and key format
    factory = BACKBONES.get(cfg.name) if cfg.name in BACKBONES else _timm_factory
    net, defaults = factory(cfg, num_classes)
    head = head_name(net)
    checkpoint = (cfg.checkpoint or defaults.get("checkpoint")) if load_weights else None
    loaded = None
    if checkpoint:
        loaded = load_checkpoint(net, checkpoint, head, cfg.format, cfg.key_map, known.sha256 if known else None)
        loaded["source"] = "config" if cfg.checkpoint else "package"  # the user's file, or one shipped with roli
    # Normalisation: the recipe's, else the file's own (MadryLab), else the known table's, else the architecture's.
    if cfg.mean is not None:
        mean, std, norm_from = cfg.mean, cfg.std, "config"
    elif loaded and "mean" in loaded:
        mean, std, norm_from = loaded["mean"], loaded["std"], "checkpoint"
    elif known is not None:
        mean, std, norm_from = known.mean, known.std, "known_checkpoints.yaml"
    else:
        mean, std, norm_from = defaults["mean"], defaults["std"], "architecture"
    in_chans = (getattr(net, "pretrained_cfg", None) or {}).get("input_size", (len(mean),))[0]
    if len(mean) not in (1, in_chans) or len(std) != len(mean):
        raise BackboneError(f"backbone.mean/std have {len(mean)}/{len(std)} values ({norm_from}) but {cfg.name} takes "
                            f"{in_chans} channel(s): give {in_chans} values each (or one, for every channel)")
    input_size = cfg.input_size or (loaded or {}).get("input_size")  # a reused roli file keeps its resize
    report = {  # goes into results.json
        "arch": cfg.name, "known": known.name if known else None, "checkpoint": loaded,
        "mean": list(mean), "std": list(std), "normalisation_from": norm_from, "input_size": input_size,
        "pretrain_eps": known.pretrain_eps if known else None,
    }
    model = Classifier(net, PixelNormalize(mean, std, input_size, in_chans=in_chans), load_report=report)
    return model


def create_backbone(name: str, checkpoint: str | None = None, num_classes: int | None = None, **fields) -> Classifier:
    """A roli Classifier (normalisation inside, [0,1] pixels in) for a registered, known or timm backbone, with
    weights from a local file and a fresh `num_classes` head; `fields` are BackboneConfig's (format, mean, std, ...).

    Example:
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model.load_report["normalisation_from"]  # the shipped file's own mean/std
        'checkpoint'
        >>> vit = roli.create_backbone("vit_base_patch16_224", checkpoint="/data/ares_vit_b.pth", num_classes=10)
    """
    return build_model(dataclasses.replace(BackboneConfig(name=name, checkpoint=checkpoint), **fields), num_classes)
