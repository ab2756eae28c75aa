"""What a backbone file says about itself, checked against the network it is loaded into.

Sources, strongest first: the recipe (backbone.mean/std), the known entry (known_checkpoints.yaml), the file's own
metadata (a roli file, MadryLab's / RobustBench's stored normaliser, top-level `arch` / `act_layer` / `mean` /
`std` / `pretrain_threat` keys, a folder's config.json), the key layout (torchvision and MadryLab files are
ImageNet-normalised), and last the architecture's default, which is logged as a WARNING because it is often wrong
(timm's ViT default is 0.5/0.5, but torchvision's and ARES's ViT-B were trained with ImageNet statistics).
A file whose keys load but whose activation, architecture or normalisation disagrees with the known entry or its
own metadata is a one-line error naming both sides, never a silent load.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from roli.config import BackboneConfig, ThreatConfig
from roli.errors import BackboneError, CheckpointError
from roli.numbers import eps_str

log = logging.getLogger(__name__)
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
# Module class name -> activation name (timm's `act_layer` strings).
ACTIVATIONS = {"ReLU": "relu", "GELU": "gelu", "QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh", "SiLU": "silu",
               "Swish": "silu", "ReLU6": "relu6", "Hardswish": "hard_swish"}
ALIASES = {"quickgelu": "quick_gelu", "nn.gelu": "gelu", "swish": "silu"}


def activations(net: nn.Module) -> set[str]:
    """The activation functions a network computes (by module class); empty when it uses none roli knows."""
    return {ACTIVATIONS[type(m).__name__] for m in net.modules() if type(m).__name__ in ACTIVATIONS}


def act_name(value: Any) -> str:
    """An activation as timm names it ('QuickGELU' -> 'quick_gelu')."""
    name = str(value).strip().lower()
    return ALIASES.get(name, name)


def file_metadata(obj: Any, config: dict | None = None) -> dict:
    """The file's own statements: architecture, activation, mean/std, input size and pretraining threat model,
    from a roli file, top-level metadata keys of a checkpoint dict, or a folder's config (offline.config_metadata)."""
    out = dict(config or {})
    if not isinstance(obj, dict):
        return out
    if obj.get("format") == "roli":
        model = obj["model"]
        if "normalize.mean" in model and "normalize.std" in model:
            out.update(mean=tuple(model["normalize.mean"].flatten().tolist()),
                       std=tuple(model["normalize.std"].flatten().tolist()))
        cfg = obj.get("config") or {}
        if (cfg.get("backbone") or {}).get("input_size"):
            out["input_size"] = cfg["backbone"]["input_size"]
        threat = cfg.get("threat") or cfg.get("attack") or {}  # files of roli < 0.3 kept eps in `attack`
        if (cfg.get("train") or {}).get("adversarial") and {"norm", "eps"} <= set(threat):
            out["pretrain_threat"] = {"norm": threat["norm"], "eps": float(threat["eps"])}
        return out
    for keys, name in ((("arch", "architecture"), "arch"), (("act_layer", "activation"), "activation")):
        value = next((obj[k] for k in keys if isinstance(obj.get(k), str)), None)
        if value:
            out[name] = value
    if isinstance(obj.get("mean"), (list, tuple)) and isinstance(obj.get("std"), (list, tuple)):
        out.update(mean=tuple(map(float, obj["mean"])), std=tuple(map(float, obj["std"])))
    threat = obj.get("pretrain_threat")
    if isinstance(threat, dict) and {"norm", "eps"} <= set(threat):
        out["pretrain_threat"] = {"norm": str(threat["norm"]), "eps": float(threat["eps"])}
    return out


def _fix_for(arch: str, act: str, known: Any) -> str:
    """The change that makes the architecture compute `act`: the known entry, or timm's variant that has it."""
    import timm

    from roli.backbones.known import known_checkpoints

    if known is not None:
        return f"`backbone.name: {known.name}`"
    quick = arch.replace("_clip_", "_clip_quickgelu_")
    if act == "quick_gelu" and quick != arch and timm.is_model(quick):
        return f"`backbone.name: {quick}`"
    entries = [e.name for e in known_checkpoints().values() if e.arch == arch and e.activation == act]
    if entries:
        return f"the known entry `backbone.name: {entries[0]}`"
    return f"an architecture built with act_layer={act}"


def check_file(net: nn.Module, arch: str, known: Any, meta: dict) -> None:
    """The network must compute what the known entry and the file's metadata say: activation and architecture."""
    found = activations(net)
    claims = [(f"known entry {known.name}", known.activation, known)] if known is not None else []
    claims.append(("the file's metadata", meta.get("activation"), None))
    for who, act, entry in claims:
        if act and found and act_name(act) not in found:
            raise BackboneError(f"{who} says the weights were trained with {act_name(act)} but {arch} computes "
                                f"{'/'.join(sorted(found))}: the keys would load and give wrong logits; use "
                                f"{_fix_for(arch, act_name(act), entry)}")
    if meta.get("arch") and meta["arch"] != arch:
        raise BackboneError(f"the file's metadata names architecture {meta['arch']} but backbone.name builds "
                            f"{arch}: set `backbone.name: {meta['arch']}` (or its known entry)")


def _same(a, b) -> bool:
    return len(a) == len(b) and torch.allclose(torch.tensor(a, dtype=torch.float64),
                                               torch.tensor(b, dtype=torch.float64), atol=1e-4)


def normalisation(cfg: BackboneConfig, known: Any, meta: dict, loaded: dict | None,
                  default: dict) -> tuple[tuple, tuple, str]:
    """(mean, std, where from): the recipe, else the known entry, else the file, else its layout, else the
    architecture's default (with a WARNING). A known entry and the file stating different values is an error."""
    stored = (meta.get("mean"), meta.get("std")) if meta.get("mean") else None
    if known is not None and stored and not (_same(known.mean, stored[0]) and _same(known.std, stored[1])):
        raise CheckpointError(f"the file stores mean/std {list(stored[0])}/{list(stored[1])} but known entry "
                              f"{known.name} says {list(known.mean)}/{list(known.std)}: is it another checkpoint? "
                              "Load it by its architecture name, or set backbone.mean/std explicitly")
    if cfg.mean is not None:
        return tuple(cfg.mean), tuple(cfg.std), "config"
    if known is not None:
        return tuple(known.mean), tuple(known.std), "known_checkpoints.yaml"
    if stored:
        return tuple(stored[0]), tuple(stored[1]), "checkpoint"
    if loaded and loaded.get("imagenet_layout"):
        return IMAGENET["mean"], IMAGENET["std"], f"layout ({loaded['format']})"
    if loaded:
        log.warning("%s says nothing about its normalisation: using %s's default mean %s / std %s. If the weights "
                    "were trained otherwise (e.g. ImageNet statistics), set backbone.mean/std or use its known entry",
                    loaded["file"], cfg.name, list(default["mean"]), list(default["std"]))
    return tuple(default["mean"]), tuple(default["std"]), "architecture"


def pretrain_threat(known: Any, meta: dict) -> tuple[dict | None, str | None]:
    """The threat model the weights were pretrained against and who says so."""
    if known is not None:
        return known.threat(), f"known entry {known.name}"
    if meta.get("pretrain_threat"):
        return meta["pretrain_threat"], "checkpoint metadata"
    return None, None


def threat_mismatch(report: dict, threat: ThreatConfig) -> str | None:
    """One sentence when the backbone was robustly pretrained against another threat model than the run's (logged
    as a WARNING; results.json's `threat_mismatch`), else None. Most robust ImageNet backbones are L-inf 4/255,
    while the RoLI paper fine-tunes at 8/255."""
    pt = (report or {}).get("pretrain_threat")
    if not pt or (pt["norm"] == threat.norm and abs(float(pt["eps"]) - threat.eps) < 1e-9):
        return None
    text = (f"the backbone was pretrained against {pt['norm']} eps {eps_str(float(pt['eps']))} "
            f"({report.get('pretrain_threat_from')}) but this run's threat model is {threat.norm} eps "
            f"{eps_str(threat.eps)}")
    log.warning("%s; robustness at the run's threat model starts from a backbone trained for another", text)
    return text
