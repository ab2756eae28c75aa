"""What a backbone offers a transfer method, detected from its modules, and what each method requires.

A method declares `requires` (roli.transfer.base.TransferMethod): a tuple of groups, each a capability name or a
tuple of alternatives (one of them is enough). `TransferMethod.check` compares it with `detect(net)` and refuses a
backbone that lacks a group with one line naming what is missing and the methods that do apply; `roli list` prints
the same comparison as a method x family matrix (roli.transfer.matrix).

Detection is by module type and shape, never by parameter names, so it also works on the meta device:
- attention_qv: attention with q and v projections, either a fused qkv nn.Linear split [q | k | v] (timm
  `Attention` of ViT, Swin's `WindowAttention`, XCiT's `XCA`) or separate q, k, v nn.Linears (XCiT's class
  attention, CaiT);
- attention_proj: such an attention's output projection `proj` (nn.Linear);
- prefix_tokens: a timm VisionTransformer token sequence (class/register prefix tokens, then patches);
- window_tokens: a timm SwinTransformer (windowed tokens);
- mlp_block: a module whose `.mlp` has fc1/fc2 that are nn.Linear (ViT, Swin, XCiT, ConvNeXt's channels-last MLP)
  or 1x1 nn.Conv2d (ConvNeXt with conv_mlp), fc2 back to fc1's input width;
- pointwise_conv: a 1x1 nn.Conv2d with groups 1 and no padding (ResNet bottlenecks and projection shortcuts);
- biases: a `bias` of a Linear, Conv or normalisation layer outside the classifier;
- norm_layers: BatchNorm, GroupNorm or LayerNorm layers.
"""

from __future__ import annotations

from timm.layers import Attention
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from timm.models.vision_transformer import VisionTransformer
from timm.models.xcit import XCA, Xcit
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
BIAS_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_NORMS)
# The attention modules whose `qkv` Linear is called as `self.qkv(x)` and split as [q | k | v].
QKV_OWNERS: tuple[type[nn.Module], ...] = (Attention, WindowAttention, XCA)

# Each capability in the words of a refusal ("lora needs <...>").
CAPABILITIES = {
    "attention_qv": "attention with q/v projections (a fused qkv or separate q, k, v Linears)",
    "attention_proj": "an attention output projection",
    "prefix_tokens": "a ViT token sequence (timm VisionTransformer)",
    "window_tokens": "Swin windowed tokens (timm SwinTransformer)",
    "mlp_block": "MLP blocks (Linear or 1x1-conv fc1/fc2)",
    "pointwise_conv": "1x1 convolutions",
    "biases": "layer biases",
    "norm_layers": "normalisation layers",
}
# Why an architecture that looks close lacks a capability (appended to its refusal).
NOTES = {
    (Xcit, "prefix_tokens"): "XCiT's local patch interaction reshapes its tokens to the patch grid and its class token "
                             "joins only in the last class-attention blocks, so prompt tokens have no place in it",
}

Requirement = str | tuple[str, ...]


def fused_qkv(net: nn.Module) -> list[nn.Module]:
    """Attention modules of a known type (QKV_OWNERS) whose `qkv` is still a plain nn.Linear."""
    return [m for m in net.modules() if isinstance(m, QKV_OWNERS) and isinstance(getattr(m, "qkv", None), nn.Linear)]


def separate_qkv(net: nn.Module) -> list[nn.Module]:
    """Modules with separate plain nn.Linear `q`, `k` and `v` projections (XCiT's and CaiT's class attention)."""
    return [m for m in net.modules() if all(type(getattr(m, a, None)) is nn.Linear for a in "qkv")]


def mlp_dim(mlp: nn.Module) -> int | None:
    """The block width of an MLP whose fc1 is an nn.Linear or a 1x1 nn.Conv2d (and fc2, if any, maps back)."""
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if type(fc1) is nn.Linear:
        width, out = fc1.in_features, getattr(fc2, "out_features", None)
    elif type(fc1) is nn.Conv2d and pointwise(fc1):
        width, out = fc1.in_channels, getattr(fc2, "out_channels", None)
    else:
        return None
    return width if fc2 is None or out == width else None


def mlp_blocks(net: nn.Module) -> list[nn.Module]:
    """Modules whose `.mlp` is an MLP of known width (mlp_dim) and not wrapped by a method yet."""
    return [m for m in net.modules() if isinstance(getattr(m, "mlp", None), nn.Module) and mlp_dim(m.mlp) is not None]


def pointwise(m: nn.Module) -> bool:
    """A plain 1x1 nn.Conv2d, groups 1, no padding: a per-pixel Linear (LoRA can adapt it as one)."""
    return type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1 and m.padding in ((0, 0), "valid")


def classifier(net: nn.Module) -> nn.Module | None:
    """The network's classifier (timm's `get_classifier()`), which every method trains anyway; None if unknown."""
    get = getattr(net, "get_classifier", None)
    return get() if callable(get) else None


def layer_biases(net: nn.Module) -> list[nn.Parameter]:
    """The `bias` parameters of the Linear, Conv and normalisation layers of `net` (BIAS_MODULES)."""
    return [m.bias for m in net.modules()
            if isinstance(m, BIAS_MODULES) and isinstance(getattr(m, "bias", None), nn.Parameter)]


def detect(net: nn.Module) -> frozenset[str]:
    """The capabilities (CAPABILITIES keys) `net` offers."""
    attention = fused_qkv(net) + separate_qkv(net)
    head = classifier(net)
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    found = {
        "attention_qv": bool(attention),
        "attention_proj": any(type(getattr(m, "proj", None)) is nn.Linear for m in attention),
        "prefix_tokens": isinstance(net, VisionTransformer),
        "window_tokens": isinstance(net, SwinTransformer),
        "mlp_block": bool(mlp_blocks(net)),
        "pointwise_conv": any(pointwise(m) for m in net.modules()),
        "biases": any(id(b) not in head_params for b in layer_biases(net)),
        "norm_layers": any(isinstance(m, _NORMS) for m in net.modules()),
    }
    return frozenset(k for k, v in found.items() if v)


def unmet(requires: tuple[Requirement, ...], net: nn.Module, caps: frozenset[str] | None = None) -> list[str]:
    """What `net` lacks of `requires`, in words ("a ... or ..."), each with its note where one applies; [] = all met."""
    caps = detect(net) if caps is None else caps
    out = []
    for group in requires:
        alternatives = (group,) if isinstance(group, str) else group
        if not caps & set(alternatives):
            words = " or ".join(CAPABILITIES[c] for c in alternatives)
            notes = [text for (cls, c), text in NOTES.items() if c in alternatives and isinstance(net, cls)]
            out.append(words + "".join(f" ({n})" for n in notes))
    return out


def applicable(net: nn.Module, caps: frozenset[str] | None = None) -> list[str]:
    """The registered transfer methods whose declared requirements `net` meets (by capability)."""
    from roli.registry import TRANSFER

    caps = detect(net) if caps is None else caps
    return [n for n in TRANSFER.names() if not unmet(TRANSFER.get(n).requires, net, caps)]


def refusal(method: str, net: nn.Module, missing: list[str]) -> str:
    """One line: what `method` needs that `net` lacks, and the methods that do apply to it."""
    name = type(net).__name__
    ok = ", ".join(applicable(net)) or "none"
    return f"{method} supports backbones with {'; and '.join(missing)}; {name} has none. Methods that apply to " \
           f"{name}: {ok}"
