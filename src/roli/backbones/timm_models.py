"""roli's shipped backbones in timm's own model registry, so timm users can load them offline:

    import roli.backbones, timm
    model = timm.create_model("vit_tiny_28_fmnist_robust", pretrained=True, num_classes=10)

`pretrained_cfg` points at the file shipped inside the package (no download) and holds its mean and std. timm's
model does not normalise: feed it (x - mean) / std, as for any timm model. Registered when roli.backbones is
imported (any roli run or backbone call does).
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from roli.backbones.tiny_vit import ARCH, FMNIST, SHIPPED, shipped


def _cfg(checkpoint: str | None) -> dict:
    return {"file": checkpoint, "num_classes": 10, "input_size": (1, 28, 28), "crop_pct": 1.0, "classifier": "head",
            "first_conv": "patch_embed.proj", "license": "mit", **FMNIST}


def _from_roli_file(state: dict, model: VisionTransformer) -> dict:
    """timm's loader hands over the roli file's `model` dict: keep the network, drop roli's normalisation layer."""
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def _build(variant: str, pretrained: bool, **kwargs) -> VisionTransformer:
    return build_model_with_cfg(VisionTransformer, variant, pretrained, pretrained_filter_fn=_from_roli_file,
                                **{**ARCH, **kwargs})


default_cfgs = generate_default_cfgs({  # timm reads this module attribute when registering
    "vit_tiny_28.untrained": _cfg(None), **{f"{name}.roli": _cfg(shipped(name)) for name in SHIPPED}})


@register_model
def vit_tiny_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The tiny ViT for 28x28x1 input, random init."""
    return _build("vit_tiny_28", pretrained, **kwargs)


@register_model
def vit_tiny_28_fmnist_robust(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Adversarially trained on Fashion-MNIST (PGD-AT, L-inf eps 0.1): roli's embedded robust backbone."""
    return _build("vit_tiny_28_fmnist_robust", pretrained, **kwargs)


@register_model
def vit_tiny_28_fmnist_standard(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Standard training on Fashion-MNIST: the non-robust baseline."""
    return _build("vit_tiny_28_fmnist_standard", pretrained, **kwargs)


@register_model
def vit_tiny_28_fmnist5_robust(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Adversarially trained on five Fashion-MNIST classes {0, 1, 2, 5, 8} (eps 0.1): the study's robust source."""
    return _build("vit_tiny_28_fmnist5_robust", pretrained, **kwargs)


@register_model
def vit_tiny_28_fmnist5_standard(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Standard training on the same five classes: the study's non-robust source."""
    return _build("vit_tiny_28_fmnist5_standard", pretrained, **kwargs)
