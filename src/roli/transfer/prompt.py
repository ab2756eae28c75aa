"""Visual prompt tuning (Jia et al., 2022, arXiv 2203.12119): `vpt_deep` and `vpt_shallow` for timm
VisionTransformer and SwinTransformer.

The method picks the injection by backbone type. ViT: `num_tokens` learnable prompt tokens are inserted after the
prefix tokens (class and any register tokens) and before the patch tokens:
- vpt_shallow: one prompt (1, T, dim), inserted before block 0; it then flows through every block.
- vpt_deep: one prompt per block; block 0 inserts its prompt, every later block *replaces* the previous block's
  prompt outputs by its own (protocol §5: 12·T·768 parameters on ViT-B).
After the last block the prompt tokens are removed, so the final norm, the pooling (token or avg) and the output
shape are exactly those of the unprompted model.

This is done by wrapping blocks (`PromptedBlock`, the original block kept as `base_layer`); timm's
`VisionTransformer.forward` is used unchanged. `forward_intermediates` of a prompted model returns the prompt
tokens in intermediate layers (and is not supported for that reason).

Init: uniform(-v, v), v = sqrt(6 / (in_chans·patch_h·patch_w + dim)), the VPT reference's xavier-like init
(it writes 3·patch² for RGB; here in_chans is the backbone's, e.g. 1 for vit_tiny_28). Prompt dropout (default
0.1) is active in train mode only, as in the reference.

Swin (`roli.transfer.prompt_swin`, the design of VPT's Swin reference): the T prompt tokens are carried beside
the NHWC feature map and join the attention of every window (no position bias, never masked); their outputs are
averaged over the windows, and at each patch merging they are tiled 4x along channels through the merge's norm and
reduction. vpt_shallow: one prompt (1, T, embed_dim) before the first block; vpt_deep: every block has its own
prompt (1, T, block dim) that replaces the incoming one, i.e. 12,032·T parameters on Swin-B (T·(2·128 + 2·256 +
18·512 + 2·1024)). The prompts are dropped after the last block, as for ViT. Same init (v from the patch embedding
and embed_dim, for every stage's prompts) and prompt dropout as for ViT.

Trainable: the prompts (ViT deep: depth·T·dim; shallow: T·embed_dim) plus the head.
Backbones: those with a token sequence (capabilities `prefix_tokens` or `window_tokens`): timm VisionTransformer
(incl. vit_tiny_28, DeiT, CLIP ViTs) and SwinTransformer. ConvNeXt and ResNet have no tokens; XCiT is refused too:
its blocks reshape the tokens to the patch grid (local patch interaction) and its class token joins only in the last
class-attention blocks, so prompt tokens would need a design of their own. UnsupportedBackbone names the methods that
do apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from roli.config import TransferConfig
from roli.transfer.base import TRANSFER, TransferMethod, UnsupportedBackbone
from roli.transfer.prompt_swin import PromptedSwinBlock, check_swin, inject_swin


@dataclass(frozen=True, kw_only=True)
class PromptConfig(TransferConfig):
    """`vpt_deep`'s fields: T prompt tokens (per block) and the prompt dropout; `vpt_shallow` has the same."""

    name: str = "vpt_deep"
    num_tokens: int = 10  # prompt tokens T (per block for vpt_deep)
    dropout: float = 0.1  # dropout on the prompt tokens, train mode only

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class ShallowPromptConfig(PromptConfig):
    """PromptConfig for `vpt_shallow` (the same fields)."""

    name: str = "vpt_shallow"


class PromptedBlock(nn.Module):
    """A ViT block (`base_layer`) that inserts or replaces prompt tokens before it and/or removes them after it."""

    def __init__(self, base_layer: nn.Module, num_prefix_tokens: int, num_tokens: int,
                 prompt: nn.Parameter | None, replace: bool, remove: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.num_prefix_tokens = num_prefix_tokens
        self.num_tokens = num_tokens
        self.register_parameter("prompt", prompt)  # (1, T, dim), or None: this block only removes the prompts
        self.replace = replace  # the input already holds T prompt tokens to be replaced (deep, block > 0)
        self.remove = remove  # drop the prompt tokens after the block (last block)
        self.prompt_dropout = nn.Dropout(dropout) if prompt is not None and dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Insert (or replace) this block's prompt after the prefix tokens of x (B, N, dim), run the block, then drop
        the prompt tokens if this is the last block."""
        n, t = self.num_prefix_tokens, self.num_tokens
        if self.prompt is not None:
            p = self.prompt_dropout(self.prompt.expand(x.shape[0], -1, -1).to(x.dtype))
            rest = x[:, n + t:] if self.replace else x[:, n:]
            x = torch.cat([x[:, :n], p, rest], dim=1)
        x = self.base_layer(x, *args, **kwargs)
        if self.remove:
            x = torch.cat([x[:, :n], x[:, n + t:]], dim=1)
        return x

    def extra_repr(self) -> str:
        """The prompt's shape and the replace/remove flags, for print(model)."""
        return f"prompt={None if self.prompt is None else tuple(self.prompt.shape)}, replace={self.replace}, " \
               f"remove={self.remove}"


def init_prompt(net: VisionTransformer | SwinTransformer, num_tokens: int, dim: int | None = None) -> nn.Parameter:
    """A (1, T, dim) prompt (dim: embed_dim unless given, e.g. a later Swin stage's width)."""
    proj = net.patch_embed.proj
    patch_area = math.prod(net.patch_embed.patch_size)
    val = math.sqrt(6.0 / float(proj.in_channels * patch_area + net.embed_dim))
    prompt = torch.empty(1, num_tokens, dim or net.embed_dim, device=proj.weight.device, dtype=proj.weight.dtype)
    return nn.Parameter(nn.init.uniform_(prompt, -val, val))


class _VPT(TransferMethod):
    config_cls = PromptConfig
    config: PromptConfig
    deep: bool
    requires = (("prefix_tokens", "window_tokens"),)

    def check(self, net: nn.Module) -> None:
        super().check(net)
        if isinstance(net, SwinTransformer):
            return check_swin(net, self.config.name)
        if not isinstance(net.blocks, nn.Sequential) or len(net.blocks) == 0:
            raise UnsupportedBackbone(f"{self.config.name}: expected ViT blocks in an nn.Sequential")
        if any(isinstance(b, PromptedBlock) for b in net.blocks):
            raise UnsupportedBackbone(f"{self.config.name}: this ViT already has prompts")

    def inject(self, net: nn.Module) -> None:
        if isinstance(net, SwinTransformer):
            c = self.config
            return inject_swin(net, lambda dim: init_prompt(net, c.num_tokens, dim), self.deep, c.dropout)
        c, last = self.config, len(net.blocks) - 1
        for i, block in enumerate(net.blocks):
            has_prompt = i == 0 or self.deep
            if not has_prompt and i != last:
                continue
            net.blocks[i] = PromptedBlock(
                block, net.num_prefix_tokens, c.num_tokens,
                prompt=init_prompt(net, c.num_tokens) if has_prompt else None,
                replace=self.deep and i > 0, remove=i == last, dropout=c.dropout,
            )

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        prompted = (PromptedBlock, PromptedSwinBlock)
        return [m.prompt for m in net.modules() if isinstance(m, prompted) and m.prompt is not None]


@TRANSFER.register("vpt_deep")
class VPTDeep(_VPT):
    """VPT-Deep (Jia et al., arXiv 2203.12119): `num_tokens` learnable prompt tokens per transformer block, each
    block's replacing the previous block's prompt outputs; the backbone stays frozen, the prompts and the head
    train. The prompts are dropped after the last block, so pooling and output shape are the plain model's.

    Backbones: timm VisionTransformer (prompts after the class/prefix tokens) and SwinTransformer (prompts join every
    window's attention, see roli.transfer.prompt_swin); others raise UnsupportedBackbone.

    Example:
        Recipe: ``transfer: {name: vpt_deep, num_tokens: 10}`` (ViT-B: 12 x 10 x 768 prompt parameters). Python:

        >>> from roli.transfer.prompt import PromptConfig
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model = roli.build_transfer(PromptConfig(num_tokens=10)).apply(model)  # 6,410 trainable
    """

    deep = True


@TRANSFER.register("vpt_shallow")
class VPTShallow(_VPT):
    """VPT-Shallow (Jia et al., arXiv 2203.12119): one set of `num_tokens` learnable prompt tokens inserted before the
    first block, which then flow through every block; the backbone stays frozen, the prompt and the head train.

    Backbones: timm VisionTransformer and SwinTransformer; others raise UnsupportedBackbone.

    Example:
        Recipe: ``transfer: {name: vpt_shallow, num_tokens: 10}``. Python:

        >>> from roli.transfer.prompt import ShallowPromptConfig
        >>> model = roli.build_transfer(ShallowPromptConfig(num_tokens=10)).apply(model)
    """

    config_cls = ShallowPromptConfig
    deep = False
