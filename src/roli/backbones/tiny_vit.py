"""A timm VisionTransformer for 28x28x1 input (patch 7: 16 tokens + class token; 0.8 M parameters).

Built on timm's own class so every PEFT method that works on ViT-B works here unchanged. The `_fmnist_*`
variants load the checkpoints shipped with roli, produced by recipes/tiny/pretrain_fmnist_{robust,standard}.yaml;
the `_fmnist5_*` ones by recipes/study/pretrain_{robust,standard}.yaml (five Fashion-MNIST classes only: the study's
source task, docs/results.md).
The same names are registered in timm's own registry by roli.backbones.timm_models.
"""

from __future__ import annotations

from importlib import resources

from timm.models.vision_transformer import VisionTransformer

from roli.backbones.factory import BACKBONES, drop_kwargs
from roli.config import BackboneConfig

FMNIST = {"mean": (0.2860,), "std": (0.3530,)}  # Fashion-MNIST pixel statistics
ARCH = {"img_size": 28, "patch_size": 7, "in_chans": 1, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 4.0}


def _tiny_vit(cfg: BackboneConfig, num_classes: int | None):
    net = VisionTransformer(**ARCH, num_classes=10 if num_classes is None else num_classes, **drop_kwargs(cfg))
    net.pretrained_cfg = {"classifier": "head", "input_size": (1, 28, 28), **FMNIST}
    return net


def shipped(name: str) -> str:
    """The path of a backbone checkpoint shipped inside the package."""
    return str(resources.files("roli") / "checkpoints" / f"{name}.pt")


@BACKBONES.register("vit_tiny_28")
def vit_tiny_28(cfg: BackboneConfig, num_classes: int | None):
    return _tiny_vit(cfg, num_classes), dict(FMNIST)


@BACKBONES.register("vit_tiny_28_fmnist_robust")
def vit_tiny_28_fmnist_robust(cfg: BackboneConfig, num_classes: int | None):
    """PGD-AT on Fashion-MNIST (eps 0.1): the embedded robust backbone."""
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist_robust")}


@BACKBONES.register("vit_tiny_28_fmnist_standard")
def vit_tiny_28_fmnist_standard(cfg: BackboneConfig, num_classes: int | None):
    """Standard (non-adversarial) training on Fashion-MNIST: the non-robust baseline."""
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist_standard")}



@BACKBONES.register("vit_tiny_28_fmnist5_robust")
def vit_tiny_28_fmnist5_robust(cfg: BackboneConfig, num_classes: int | None):
    """PGD-AT (eps 0.1) on Fashion-MNIST classes {0, 1, 2, 5, 8} only: the study's robust source backbone."""
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist5_robust")}


@BACKBONES.register("vit_tiny_28_fmnist5_standard")
def vit_tiny_28_fmnist5_standard(cfg: BackboneConfig, num_classes: int | None):
    """Standard training on Fashion-MNIST classes {0, 1, 2, 5, 8} only: the study's non-robust source backbone."""
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist5_standard")}
