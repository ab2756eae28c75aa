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
# The pretrained variants shipped inside the package (roli/checkpoints/<name>.pt): registered below, in timm's
# registry (roli.backbones.timm_models) and as vit_tiny_28 in the sweep's measured step costs.
SHIPPED = ("vit_tiny_28_fmnist_robust", "vit_tiny_28_fmnist_standard", "vit_tiny_28_fmnist5_robust",
           "vit_tiny_28_fmnist5_standard")
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
    """A timm VisionTransformer for 1 x 28 x 28 inputs (patch 7, width 128, depth 4, 4 heads; 0.8 M parameters),
    random init; the model normalises [0,1] pixels with Fashion-MNIST's mean and std. Small enough to train and
    attack on a CPU in minutes, and every ViT transfer method applies to it unchanged.

    Example:
        Recipe: ``backbone: {name: vit_tiny_28}``. Python:

        >>> model = roli.create_backbone("vit_tiny_28", num_classes=10)  # [0,1] in, logits out
    """
    return _tiny_vit(cfg, num_classes), dict(FMNIST)


@BACKBONES.register("vit_tiny_28_fmnist_robust")
def vit_tiny_28_fmnist_robust(cfg: BackboneConfig, num_classes: int | None):
    """vit_tiny_28 adversarially trained on Fashion-MNIST (PGD-AT, L-inf eps 0.1): the robust backbone shipped with
    roli (recipes/tiny/pretrain_fmnist_robust.yaml). Its weights load from the package; the head is new.

    Example:
        Recipe: ``backbone: {name: vit_tiny_28_fmnist_robust}`` (recipes/tiny/mnist_base.yaml). Python:

        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
    """
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist_robust")}


@BACKBONES.register("vit_tiny_28_fmnist_standard")
def vit_tiny_28_fmnist_standard(cfg: BackboneConfig, num_classes: int | None):
    """vit_tiny_28 with standard (non-adversarial) training on Fashion-MNIST: the non-robust baseline to the robust
    backbone (recipes/tiny/pretrain_fmnist_standard.yaml). Its weights load from the package; the head is new.

    Example:
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_standard", num_classes=10)
    """
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist_standard")}


@BACKBONES.register("vit_tiny_28_fmnist5_robust")
def vit_tiny_28_fmnist5_robust(cfg: BackboneConfig, num_classes: int | None):
    """vit_tiny_28 adversarially trained (PGD-AT, L-inf eps 0.1) on Fashion-MNIST classes {0, 1, 2, 5, 8} only: the
    study's robust source backbone (recipes/study/pretrain_robust.yaml), for transfer to the other five classes.

    Example:
        Recipe (recipes/study/base.yaml)::

            backbone: {name: vit_tiny_28_fmnist5_robust}
            data: {name: fashion_mnist, classes: [3, 4, 6, 7, 9]}
    """
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist5_robust")}


@BACKBONES.register("vit_tiny_28_fmnist5_standard")
def vit_tiny_28_fmnist5_standard(cfg: BackboneConfig, num_classes: int | None):
    """vit_tiny_28 with standard training on Fashion-MNIST classes {0, 1, 2, 5, 8} only: the study's non-robust
    source backbone (recipes/study/pretrain_standard.yaml).

    Example:
        >>> model = roli.create_backbone("vit_tiny_28_fmnist5_standard", num_classes=5)
    """
    return _tiny_vit(cfg, num_classes), {**FMNIST, "checkpoint": shipped("vit_tiny_28_fmnist5_standard")}
