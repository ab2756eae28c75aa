"""VPT on timm's SwinTransformer (timm >= 0.9: NHWC stages, `downsample` at the start of a stage).

The method (`vpt_deep` / `vpt_shallow`, registered in `roli.transfer.prompt`) wraps modules in place:
- every SwinTransformerBlock becomes a `PromptedSwinBlock` (the block kept as `base_layer`); blocks pass
  `(x, prompts)` on, x (B, H, W, C) as timm has it, prompts (B, T, C);
- every PatchMerging becomes a `PromptedPatchMerging` (kept as `base_layer`), which merges x as timm does and
  tiles the prompts 4x along channels, (B, T, 4C), through the merge's own norm and reduction (4C -> 2C);
- the first block (stage 0) inserts its prompt; with vpt_deep every later block *replaces* the prompts coming in by
  its own; the last block drops them and returns x only. timm's stage and model forwards run unchanged, so the
  final norm, the pooling, the head and every output shape are the plain model's.

A prompted block, with the block's own submodules (norm1, attn.qkv, attn.proj, the relative position table,
attn_mask, drop_path1/2, norm2, mlp) and the window/shift sizes the block computed (also where the feature map is
smaller than the window; padding as timm pads): the T prompt tokens join the attention of every window, which runs
over T + ws·ws tokens; the relative position bias covers window tokens only (0 on prompt rows and columns); for
shifted windows the attention mask is extended with 0 (no masking) on prompt rows and columns. The prompt outputs
(one per window) are averaged over the windows -> (B, T, C). Residual, norm2 and the MLP apply to prompts as to
any token (one drop_path draw per sample for both).

Not supported on a prompted Swin: gradient checkpointing of stages and `forward_intermediates` (both would see the
`(x, prompts)` pairs), and `set_input_size` after prompting (set the size first, then apply the method).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerStage,
    window_partition,
    window_reverse,
)
from torch import nn

from roli.transfer.base import UnsupportedBackbone

Pair = tuple[torch.Tensor, torch.Tensor]


class PromptedSwinBlock(nn.Module):
    """A Swin block (`base_layer`) whose attention also runs over T prompt tokens carried beside x."""

    def __init__(self, base_layer: SwinTransformerBlock, prompt: nn.Parameter | None, remove: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.register_parameter("prompt", prompt)  # (1, T, dim): inserted (first block) or replacing (deep)
        self.remove = remove  # drop the prompts after the block and return x only (the model's last block)
        self.prompt_dropout = nn.Dropout(dropout) if prompt is not None and dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor | Pair) -> torch.Tensor | Pair:
        """x or (x, prompts) in; (x, prompts) out, or x alone after the model's last block. A block with its own
        prompt uses it instead of the incoming one."""
        x, p = x if isinstance(x, tuple) else (x, None)
        if self.prompt is not None:
            p = self.prompt_dropout(self.prompt.expand(x.shape[0], -1, -1).to(x.dtype))
        if p is None:  # nothing to carry (not reached through `inject`)
            x = self.base_layer(x)
        else:
            x, p = self.forward_prompted(x, p)
        return x if self.remove else (x, p)

    def forward_prompted(self, x: torch.Tensor, p: torch.Tensor) -> Pair:
        """The block on x (B, H, W, C) and prompts (B, T, C) together: attention with the prompts in every window,
        then the residuals, norm2 and MLP as timm's block applies them; returns both, shapes unchanged."""
        blk = self.base_layer
        B, H, W, C = x.shape
        t = p.shape[1]
        ax, ap = self.attention(blk.norm1(x), blk.norm1(p))
        seq = torch.cat([p, x.reshape(B, H * W, C)], dim=1)
        seq = seq + blk.drop_path1(torch.cat([ap, ax.reshape(B, H * W, C)], dim=1))
        seq = seq + blk.drop_path2(blk.mlp(blk.norm2(seq)))
        return seq[:, t:].reshape(B, H, W, C), seq[:, :t]

    def attention(self, x: torch.Tensor, p: torch.Tensor) -> Pair:
        """Shifted-window attention of the normed x (B, H, W, C), each window with the prompts (B, T, C) added."""
        blk, attn = self.base_layer, self.base_layer.attn
        B, H, W, C = x.shape
        t = p.shape[1]
        ws, shift = tuple(blk.window_size), tuple(blk.shift_size)
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        x = F.pad(x, (0, 0, 0, (ws[1] - W % ws[1]) % ws[1], 0, (ws[0] - H % ws[0]) % ws[0]))
        Hp, Wp = x.shape[1], x.shape[2]
        mask = blk.get_attn_mask(x) if getattr(blk, "dynamic_mask", False) else blk.attn_mask
        windows = window_partition(x, ws).reshape(B, -1, ws[0] * ws[1], C)  # (B, nW, N, C)
        nw, n = windows.shape[1], windows.shape[2]
        tokens = torch.cat([p.unsqueeze(1).expand(B, nw, t, C), windows], dim=2).reshape(B * nw, t + n, C)

        q, k, v = attn.qkv(tokens).reshape(B * nw, t + n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.attention_bias(t, mask).to(q.dtype)  # (1 or nW, heads, T+N, T+N)
        if bias.shape[0] > 1:
            bias = bias.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(B * nw, *bias.shape[1:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale,
                                             dropout_p=attn.attn_drop.p if attn.training else 0.0)
        out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(B * nw, t + n, -1)))

        prompts = out[:, :t].reshape(B, nw, t, C).mean(dim=1)  # one output per window, averaged
        x = window_reverse(out[:, t:].reshape(-1, ws[0], ws[1], C), ws, Hp, Wp)[:, :H, :W]
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x, prompts

    def attention_bias(self, t: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Relative position bias (+ shift mask) for T prompt + N window tokens: 0 on prompt rows and columns."""
        attn = self.base_layer.attn
        n = attn.relative_position_index.shape[0]
        rel = attn.relative_position_bias_table[attn.relative_position_index.reshape(-1)].reshape(n, n, -1)
        bias = F.pad(rel.permute(2, 0, 1), (t, 0, t, 0)).unsqueeze(0)  # (1, heads, T+N, T+N)
        if mask is not None:  # (nW, N, N) -> (nW, 1, T+N, T+N)
            bias = bias + F.pad(mask, (t, 0, t, 0)).unsqueeze(1).to(bias.dtype)
        return bias

    def extra_repr(self) -> str:
        """The prompt's shape and the remove flag, for print(model)."""
        return f"prompt={None if self.prompt is None else tuple(self.prompt.shape)}, remove={self.remove}"


class PromptedPatchMerging(nn.Module):
    """timm's PatchMerging (`base_layer`) on x; the prompts (B, T, C) go through its norm and reduction tiled 4x."""

    def __init__(self, base_layer: PatchMerging) -> None:
        super().__init__()
        self.base_layer = base_layer

    def forward(self, x: torch.Tensor | Pair) -> torch.Tensor | Pair:
        """timm's merge of x; prompts (B, T, C), if carried, are tiled to 4C and reduced to 2C alongside."""
        if not isinstance(x, tuple):
            return self.base_layer(x)
        x, p = x
        m = self.base_layer
        return m(x), m.reduction(m.norm(p.repeat(1, 1, 4)))


def check_swin(net: SwinTransformer, method: str) -> None:
    """Raise UnsupportedBackbone unless `net` has the layout these prompts wrap: timm SwinTransformerStages of
    SwinTransformerBlocks with PatchMerging (or none), not prompted yet, without gradient checkpointing."""
    stages = net.layers
    if not isinstance(stages, nn.Sequential) or len(stages) == 0 or \
            not all(isinstance(s, SwinTransformerStage) for s in stages):
        raise UnsupportedBackbone(f"{method}: expected timm SwinTransformerStage layers in an nn.Sequential")
    for i, s in enumerate(stages):
        if any(isinstance(b, PromptedSwinBlock) for b in s.blocks) or isinstance(s.downsample, PromptedPatchMerging):
            raise UnsupportedBackbone(f"{method}: this Swin already has prompts")
        if not isinstance(s.blocks, nn.Sequential) or not all(isinstance(b, SwinTransformerBlock) for b in s.blocks):
            raise UnsupportedBackbone(f"{method}: stage {i} has blocks other than timm SwinTransformerBlock")
        if not isinstance(s.downsample, PatchMerging | nn.Identity):
            raise UnsupportedBackbone(f"{method}: stage {i} downsamples with {type(s.downsample).__name__}, "
                                      "not timm PatchMerging")
        if s.grad_checkpointing:
            raise UnsupportedBackbone(f"{method}: gradient checkpointing is not supported with Swin prompts")
    if not any(len(s.blocks) for s in stages):
        raise UnsupportedBackbone(f"{method}: this Swin has no blocks")


def inject_swin(net: SwinTransformer, make_prompt: Callable[[int], nn.Parameter], deep: bool,
                dropout: float) -> None:
    """Wrap every block and patch merging; `make_prompt(dim)` makes one (1, T, dim) prompt."""
    blocks = [(stage, j) for stage in net.layers for j in range(len(stage.blocks))]
    for i, (stage, j) in enumerate(blocks):
        block = stage.blocks[j]
        prompt = make_prompt(block.norm1.normalized_shape[0]) if i == 0 or deep else None
        stage.blocks[j] = PromptedSwinBlock(block, prompt, remove=i == len(blocks) - 1, dropout=dropout)
    for stage in net.layers:
        if isinstance(stage.downsample, PatchMerging):
            stage.downsample = PromptedPatchMerging(stage.downsample)
