"""Build a backbone from its config: architecture, normalisation and local weights (never a download)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from roli.backbones.convert import load_checkpoint
from roli.backbones.normalize import Classifier, PixelNormalize, head_name
from roli.backbones.offline import locate
from roli.backbones.provenance import IMAGENET, activations, check_file, normalisation, pretrain_threat
from roli.config import DROP_KNOBS, BackboneConfig
from roli.errors import BackboneError
from roli.files import sha256sum
from roli.registry import BACKBONES

# A factory returns (net, defaults): defaults hold mean, std and optionally a packaged `checkpoint`.
BackboneFactory = Callable[[BackboneConfig, int | None], tuple[nn.Module, dict[str, Any]]]


def drop_kwargs(cfg: BackboneConfig) -> dict[str, float]:
    """The dropout knobs that are set (> 0): only those are passed, since architectures differ in which they have."""
    return {k: getattr(cfg, k) for k in DROP_KNOBS if getattr(cfg, k) > 0}


def _timm_factory(cfg: BackboneConfig, num_classes: int | None,
                  act_layer: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    if not timm.is_model(cfg.name):
        raise BackboneError(
            f"unknown backbone {cfg.name!r}: not a roli backbone {BACKBONES.names()} nor a timm architecture "
            "(see timm.list_models())"
        )
    kwargs: dict[str, Any] = drop_kwargs(cfg)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if act_layer:
        kwargs["act_layer"] = act_layer  # a known entry trained with another activation (ARES's GELU ResNets)
    try:
        net = timm.create_model(cfg.name, pretrained=False, **kwargs)
    except TypeError as e:  # an architecture without one of the dropout knobs
        raise BackboneError(f"{cfg.name} does not accept {sorted(drop_kwargs(cfg))} ({e}); set the knobs it has "
                            "(ViT: proj/attn/pos_drop_rate, drop_path_rate; Swin: proj/attn_drop_rate, "
                            "drop_path_rate; ResNet: drop_rate, drop_path_rate) or leave them at 0") from None
    pc = net.pretrained_cfg
    return net, {"mean": tuple(pc.get("mean", IMAGENET["mean"])), "std": tuple(pc.get("std", IMAGENET["std"]))}


def _act_layer(arch: str, known) -> str | None:
    """The act_layer to build a known entry's architecture with, when its own default differs (checked on the
    meta device, so nothing is allocated)."""
    import timm

    if known is None or not known.activation or not timm.is_model(arch):
        return None
    with torch.device("meta"):
        own = activations(timm.create_model(arch, pretrained=False))
    return None if not own or known.activation in own else known.activation


def _network(cfg: BackboneConfig, num_classes: int | None, known) -> tuple[nn.Module, dict[str, Any]]:
    if cfg.name in BACKBONES:
        return BACKBONES.get(cfg.name)(cfg, num_classes)
    return _timm_factory(cfg, num_classes, _act_layer(cfg.name, known))


def _refuse_hub(cfg: BackboneConfig) -> None:
    hub = ("hf-hub:", "hf_hub:", "http://", "https://", "timm/")
    if cfg.pretrained or (cfg.checkpoint or "").startswith(hub) or cfg.name.startswith(hub):
        raise BackboneError(
            "roli never downloads weights (and offline it cannot). Download the checkpoint yourself, then pass "
            "its local path: `backbone.checkpoint: /path/to/weights.pth` (or a local-dir:/Hugging Face cache folder)."
        )


def build_model(cfg: BackboneConfig, num_classes: int | None = None, load_weights: bool = True) -> Classifier:
    """The architecture with its normalisation; `load_weights=False` skips the pretrained file (the caller loads a
    full roli checkpoint instead, so `roli eval` works even if the original backbone file has moved)."""
    _refuse_hub(cfg)
    from roli.backbones.known import identify, resolve_known

    cfg, known = resolve_known(cfg, need_file=load_weights)  # a known name -> its timm architecture and key format
    where = locate(cfg.checkpoint) if (cfg.checkpoint and load_weights) else None
    if where is not None and known is None:  # a known file given by its architecture name is still known
        known = identify(cfg.name, where.weights, sha256sum(where.weights))
        if known is not None and cfg.format == "auto":
            cfg = dataclasses.replace(cfg, format=known.format)
    net, defaults = _network(cfg, num_classes, known)
    checkpoint = where or (defaults.get("checkpoint") if load_weights else None)
    loaded = None
    if checkpoint:
        loaded = load_checkpoint(net, checkpoint, head_name(net), cfg.format, cfg.key_map,
                                 known.sha256 if known else None)
        loaded["source"] = "config" if cfg.checkpoint else "package"  # the user's file, or one shipped with roli
    meta = (loaded or {}).get("meta", {})
    check_file(net, cfg.name, known, meta)
    mean, std, norm_from = normalisation(cfg, known, meta, loaded, defaults)
    in_chans = (getattr(net, "pretrained_cfg", None) or {}).get("input_size", (len(mean),))[0]
    if len(mean) not in (1, in_chans) or len(std) != len(mean):
        raise BackboneError(f"backbone.mean/std have {len(mean)}/{len(std)} values ({norm_from}) but {cfg.name} takes "
                            f"{in_chans} channel(s): give {in_chans} values each (or one, for every channel)")
    threat, threat_from = pretrain_threat(known, meta)
    report = {  # goes into results.json
        "arch": cfg.name, "known": known.name if known else None, "checkpoint": loaded,
        "mean": list(mean), "std": list(std), "normalisation_from": norm_from,
        "input_size": cfg.input_size or (loaded or {}).get("input_size"),  # a reused roli file keeps its resize
        "activation": sorted(activations(net)), "pretrain_threat": threat, "pretrain_threat_from": threat_from,
        "pretrain_eps": threat["eps"] if threat else None,  # older readers
        "preprocessing": known.preprocessing() if known else meta.get("preprocessing"),
    }
    return Classifier(net, PixelNormalize(mean, std, report["input_size"], in_chans=in_chans), load_report=report)


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
