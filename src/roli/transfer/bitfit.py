"""BitFit (Ben Zaken et al., 2022, arXiv 2106.10199): train only the bias terms (the reference's `tinytl-bias`,
protocol §5).

The trainable set is chosen by module type, not by name: the parameter `bias` of every nn.Linear, nn.Conv1d/2d/3d,
LayerNorm, BatchNorm and GroupNorm module (timm subclasses such as LayerNorm2d or BatchNormAct2d included), plus
the head. Other parameters with "bias" in their name are not biases of a layer and stay frozen by default:
- `relative_position_bias_table` (Swin's attention position table) is trained only with
  `include_rel_pos_bias: true`. The reference trains it because it selects parameters by the substring 'bias'
  (protocol B9); the option reproduces that.
- separate q/v bias parameters (BEiT, Swin-V2) and nn.MultiheadAttention's in_proj_bias are not included.

Backbones: any with layer biases outside the classifier (capability `biases`). ViT, XCiT: every Linear/LayerNorm
bias and the patch-embed conv bias (XCiT: also its BatchNorm biases); Swin: the same (+ the position tables with the
option); ConvNeXt: every conv, Linear and LayerNorm bias; ResNet: the BatchNorm biases, since its convs have none.
ResNet's BitFit is therefore "BatchNorm shifts only": with trainable biases its BatchNorms are not frozen, so they run
in train mode and update their running statistics, as in full finetuning (stored in every checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from roli.config import TransferConfig
from roli.transfer.base import TRANSFER, TransferMethod
from roli.transfer.capabilities import BIAS_MODULES, layer_biases  # noqa: F401  (BIAS_MODULES: imported from here)


@dataclass(frozen=True, kw_only=True)
class BitFitConfig(TransferConfig):
    """The `bitfit` method's one field: whether Swin's relative position tables train too."""

    name: str = "bitfit"
    include_rel_pos_bias: bool = False  # also train Swin's relative_position_bias_table (the reference, B9)


def relative_position_tables(net: nn.Module) -> list[nn.Parameter]:
    """Every `relative_position_bias_table` of `net` (Swin's attention position biases)."""
    return [m.relative_position_bias_table for m in net.modules()
            if isinstance(getattr(m, "relative_position_bias_table", None), nn.Parameter)]


@TRANSFER.register("bitfit")
class BitFit(TransferMethod):
    """BitFit (Ben Zaken et al., arXiv 2106.10199): only the bias terms of the backbone's layers train, with the
    head; every weight stays frozen. Needs layer biases (every timm family has them; ResNet: BatchNorm biases only).

    Example:
        Recipe: ``transfer: {name: bitfit}``; ``transfer: {name: bitfit, include_rel_pos_bias: true}`` also trains
        Swin's relative position tables, as the reference did. Python:

        >>> from roli.transfer.bitfit import BitFitConfig
        >>> model = roli.build_transfer(BitFitConfig()).apply(model)
    """

    config_cls = BitFitConfig
    config: BitFitConfig
    requires = ("biases",)

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        """The layer biases, plus Swin's position tables with `include_rel_pos_bias`."""
        params = layer_biases(net)
        if self.config.include_rel_pos_bias:
            params += relative_position_tables(net)
        return params
