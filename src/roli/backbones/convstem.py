"""ConvNeXt with a convolutional stem (Singh, Croce, Hein 2023, "Revisiting Adversarial Training for ImageNet"):
RobustBench's `Singh2023Revisiting_ConvNeXt-{T,S,B,L}-ConvStem`, registered as timm models so roli (and timm
users) build them by name, random init or from a local file:

    timm.create_model("convnext_base_convstem", num_classes=10)   # after `import roli.backbones`

The stem replaces ConvNeXt's 4x4 patchify conv by 3x3 convolutions with channels-first LayerNorm and GELU
(overall stride 4, as the patch stem), under the same key names as RobustBench's code (`stem.stem.N.*`), so its
files load without renaming. Tiny/Small use two stride-2 convs (RobustBench's ConvBlock1), Base/Large three
(ConvBlock3: stride 2, 2, 1).
"""

from __future__ import annotations

from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from torch import nn

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


class ConvStem(nn.Module):
    """3x3 stride-2 convolutions, each followed by a channels-first LayerNorm (eps 1e-6) and GELU, to `widths`;
    the last conv has stride `last_stride` (2 for ConvBlock1, 1 for ConvBlock3)."""

    def __init__(self, widths: tuple[int, ...], last_stride: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip((in_chans, *widths[:-1]), widths)):
            stride = last_stride if i == len(widths) - 1 else 2
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), LayerNorm2d(cout, eps=1e-6), nn.GELU()]
        self.stem = nn.Sequential(*layers)

    def forward(self, x):
        """(batch, 3, H, W) pixels -> (batch, widths[-1], H/4, W/4) features."""
        return self.stem(x)


def stem_widths(dims0: int, planes: int, three: bool) -> tuple[int, ...]:
    """RobustBench's stem widths: ConvBlock1(planes) = (planes, 2 planes); ConvBlock3(planes) = (planes,
    1.5 planes, 2 planes). The last must equal ConvNeXt's first stage width."""
    widths = (planes, int(planes * 1.5), planes * 2) if three else (planes, planes * 2)
    if widths[-1] != dims0:
        raise ValueError(f"a stem of {widths} does not feed a first stage of width {dims0}")
    return widths


def convnext_convstem(variant: str, depths, dims, planes: int, three: bool, pretrained: bool = False,
                      **kwargs) -> ConvNeXt:
    """A ConvNeXt of `depths`/`dims` whose stem is RobustBench's ConvStem (random init; weights come from a file)."""
    model = build_model_with_cfg(ConvNeXt, variant, pretrained, depths=depths, dims=dims, **kwargs)
    model.stem = ConvStem(stem_widths(dims[0], planes, three), 1 if three else 2, kwargs.get("in_chans", 3))
    return model


def _cfg() -> dict:
    return {"num_classes": 1000, "input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
            "classifier": "head.fc", "first_conv": "stem.stem.0", "license": "unknown", **IMAGENET}


default_cfgs = generate_default_cfgs({f"convnext_{s}_convstem.untrained": _cfg()
                                      for s in ("tiny", "small", "base", "large")})


@register_model
def convnext_tiny_convstem(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """ConvNeXt-T + ConvStem (RobustBench Singh2023Revisiting_ConvNeXt-T-ConvStem)."""
    return convnext_convstem("convnext_tiny_convstem", (3, 3, 9, 3), (96, 192, 384, 768), 48, False, pretrained,
                             **kwargs)


@register_model
def convnext_small_convstem(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """ConvNeXt-S + ConvStem (RobustBench Singh2023Revisiting_ConvNeXt-S-ConvStem)."""
    return convnext_convstem("convnext_small_convstem", (3, 3, 27, 3), (96, 192, 384, 768), 48, False, pretrained,
                             **kwargs)


@register_model
def convnext_base_convstem(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """ConvNeXt-B + ConvStem (RobustBench Singh2023Revisiting_ConvNeXt-B-ConvStem)."""
    return convnext_convstem("convnext_base_convstem", (3, 3, 27, 3), (128, 256, 512, 1024), 64, True, pretrained,
                             **kwargs)


@register_model
def convnext_large_convstem(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """ConvNeXt-L + ConvStem (RobustBench Singh2023Revisiting_ConvNeXt-L-ConvStem)."""
    return convnext_convstem("convnext_large_convstem", (3, 3, 27, 3), (192, 384, 768, 1536), 96, True, pretrained,
                             **kwargs)
