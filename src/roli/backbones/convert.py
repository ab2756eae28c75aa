"""Checkpoint key converters: published robust/standard ImageNet weights -> today's timm state-dict layout.

A converter maps a state dict (already unwrapped from `{'model': ...}`) onto the keys of a timm model and says
what it did. Formats (`backbone.format`):
- timm: a plain timm state dict (a DDP `module.` prefix is stripped). ARES 2.0's ViT-B/16 is one.
- timm_swin_legacy / ms_swin: the Swin layout of timm <= 0.6 and of Microsoft's official release: `downsample`
  at the *end* of stage N (today: the start of stage N+1), `head.*` (today: `head.fc.*`), and the buffers
  `relative_position_index` / `attn_mask` saved (today: recomputed, not saved; they are checked, then dropped).
- ares: ARES 2.0 robust checkpoints, plain timm state dicts of either Swin layout (detected).
- torchvision_vit: torchvision `vit_b_16` -> timm `vit_base_patch16_224` (same computation, renamed keys).
- madry: MadryLab `robustness` (`module.model.*`, a duplicate `module.attacker.model.*` and the normaliser's
  `new_mean` / `new_std`; the Hugging Face Hub `.ckpt` files too) -> torchvision/timm ResNet keys; the file's
  mean/std are returned.
- more layouts in roli.backbones.layouts: robustbench, torchvision_swin, open_clip, convnext_fb, xcit.
- auto: detected from the keys (the formats are distinguishable by their key names). An explicit format whose
  layout the keys contradict (an old-layout Swin given as `timm`) is an error naming both, never a partial load.
`backbone.key_map` rules ([regex, replacement]) run after the converter, for any other layout.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from roli.backbones.offline import Located, config_metadata, locate, read_weights
from roli.backbones.provenance import file_metadata
from roli.backbones.weights import extract_state_dict, load_backbone_weights
from roli.errors import CheckpointError
from roli.files import sha256sum
from roli.registry import CONVERTERS

log = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


@dataclass
class Conversion:
    """A converted state dict plus what was done to it (all of it goes into the load report)."""

    state: State
    format: str
    renamed: dict[str, str] = field(default_factory=dict)  # old key -> new key, only keys that changed
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why it was dropped
    mean: tuple[float, ...] | None = None  # normalisation stored in the file (MadryLab, RobustBench), if any
    std: tuple[float, ...] | None = None
    imagenet_layout: bool = False  # the layout implies ImageNet mean/std (torchvision, MadryLab)


Converter = Callable[[State, nn.Module], Conversion]
# Detection, tried in order (first match wins): (format, predicate on the keys with a `module.` prefix stripped).
DETECTORS: list[tuple[str, Callable[[State], bool]]] = []
# The detected layouts each explicit format reads (a plugin's format not listed here is not checked).
ACCEPTS: dict[str, set[str]] = {"timm": {"timm"}, "ares": {"timm", "timm_swin_legacy", "robustbench"},
                                "timm_swin_legacy": {"timm_swin_legacy"}, "ms_swin": {"timm_swin_legacy"},
                                "madry": {"madry"}, "torchvision_vit": {"torchvision_vit"}}


def detects(fmt: str, accepts: Sequence[str] = (), any_inner: bool = False) -> Callable:
    """Register a key-layout predicate for `fmt` (tried by `format: auto`) and the other layouts `fmt` reads
    (`any_inner`: a wrapper whose inside may be in any layout, so nothing is checked)."""
    def deco(predicate: Callable[[State], bool]) -> Callable[[State], bool]:
        DETECTORS.append((fmt, predicate))
        if not any_inner:
            ACCEPTS[fmt] = {fmt, *accepts}
        return predicate
    return deco


def _rename(state: State, fmt: str, rules: Sequence[tuple[str, str]]) -> Conversion:
    """Apply regex rules in order to every key; a key that becomes empty is dropped."""
    out = Conversion({}, fmt)
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if not new:
            out.dropped[key] = "dropped by a key rule"
            continue
        if new in out.state:
            raise CheckpointError(f"two checkpoint keys map to {new!r} (the second is {key!r}); fix the key rules")
        out.state[new] = value
        if new != key:
            out.renamed[key] = new
    return out


def _strip_prefix(state: State, prefix: str = "module.") -> State:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


@CONVERTERS.register("timm")
def timm_layout(state: State, net: nn.Module) -> Conversion:
    """Keys already in today's timm layout (a `module.` prefix from DataParallel stripped)."""
    return _rename(state, "timm", [(r"^module\.", "")] if all(k.startswith("module.") for k in state) else [])


def _is_swin_legacy(state: State) -> bool:
    return any(k.endswith(("relative_position_index", "attn_mask")) or re.match(r"layers\.0\.downsample\.", k)
               for k in state)


def swin_legacy(state: State, net: nn.Module) -> Conversion:
    """Old timm / Microsoft Swin keys -> timm >= 0.9 keys; saved index buffers are checked against the model."""
    state = _strip_prefix(state)
    buffers = dict(net.named_buffers())
    kept: State = {}
    dropped: dict[str, str] = {}
    for k, v in state.items():
        if not k.endswith(("relative_position_index", "attn_mask")):
            kept[k] = v
            continue
        new = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
        own = buffers.get(new)
        # The index buffer depends only on the window size: a mismatch means another window size (architecture).
        comparable = own is not None and not (own.is_meta or v.is_meta)
        if k.endswith("relative_position_index") and comparable and not torch.equal(own.to(v.dtype), v):
            raise CheckpointError(f"{k}: the checkpoint's relative position index differs from the model's "
                                  "(another window size?); pick the matching timm architecture")
        dropped[k] = "buffer recomputed by timm (not a weight)"
    conv = _rename(kept, "timm_swin_legacy", [
        (r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample"),
        (r"^head\.(weight|bias)$", r"head.fc.\1"),
    ])
    conv.dropped.update(dropped)
    return conv


CONVERTERS.register("timm_swin_legacy")(swin_legacy)
CONVERTERS.register("ms_swin")(swin_legacy)  # Microsoft's release: the same layout inside {'model': ...}


@CONVERTERS.register("ares")
def ares(state: State, net: nn.Module) -> Conversion:
    """ARES 2.0 checkpoints are timm state dicts; its Swin-B/L may predate timm's Swin key change, and a copy saved
    from RobustBench's loader has the `model.` / `normalize.` wrapper."""
    if detect_format(state) == "robustbench":
        conv = CONVERTERS.get("robustbench")(state, net)
    else:
        conv = swin_legacy(state, net) if _is_swin_legacy(state) else timm_layout(state, net)
    conv.format = f"ares ({conv.format})"
    return conv


TORCHVISION_VIT = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_weight$", ".attn.qkv.weight"),  # both fuse q, k, v in this order
    (r"\.self_attention\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.(0|linear_1)\.", ".mlp.fc1."),  # torchvision < 0.13 named them linear_1 / linear_2
    (r"\.mlp\.(3|linear_2)\.", ".mlp.fc2."),
]


@CONVERTERS.register("torchvision_vit")
def torchvision_vit(state: State, net: nn.Module) -> Conversion:
    """A torchvision ViT state dict (`encoder.layers.encoder_layer_N...`) renamed to timm's VisionTransformer keys."""
    if any(k.startswith("heads.pre_logits") for k in state):
        raise CheckpointError("this torchvision ViT has a pre-logits layer (representation_size), which timm's "
                              "VisionTransformer has no slot for; use a checkpoint without it")
    conv = _rename(_strip_prefix(state), "torchvision_vit", TORCHVISION_VIT)
    conv.imagenet_layout = True
    return conv


@CONVERTERS.register("madry")
def madry(state: State, net: nn.Module) -> Conversion:
    """MadryLab `robustness` AttackerModel: keep `model.*`, check the attacker's copy is identical, read the normaliser."""
    state = _strip_prefix(state)
    if not any(k.startswith("model.") for k in state):
        raise CheckpointError("not a MadryLab robustness checkpoint: no `module.model.*` keys")
    model = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    conv = _rename(model, "madry", [])
    conv.imagenet_layout = True  # robustness normalises ImageNet models with ImageNet statistics
    conv.renamed = {f"module.model.{k}": k for k in model}
    for k, v in state.items():
        if k.startswith("attacker.model."):
            twin = model.get(k[len("attacker.model."):])
            if twin is None or not torch.equal(twin, v):
                raise CheckpointError(f"module.{k} differs from its module.model.* twin: not a robustness AttackerModel")
            conv.dropped[f"module.{k}"] = "the attacker's copy of module.model (identical)"
        elif not k.startswith("model."):
            conv.dropped[f"module.{k}"] = "normaliser (applied by roli's PixelNormalize instead)"
    if "normalizer.new_mean" in state and "normalizer.new_std" in state:
        conv.mean = tuple(float(x) for x in state["normalizer.new_mean"].flatten())
        conv.std = tuple(float(x) for x in state["normalizer.new_std"].flatten())
    return conv


def detect_format(state: State) -> str:
    """The format the keys identify (see the module docstring); `timm` when nothing else matches."""
    keys = _strip_prefix(state)
    if any(k.startswith("model.") for k in keys) and any(k.startswith(("normalizer.", "attacker.")) for k in keys):
        return "madry"
    if "conv_proj.weight" in keys and any(k.startswith("encoder.layers.encoder_layer_") for k in keys):
        return "torchvision_vit"
    for fmt, predicate in DETECTORS:
        if predicate(keys):
            return fmt
    if _is_swin_legacy(keys):
        return "timm_swin_legacy"
    return "timm"


def check_layout(state: State, fmt: str) -> None:
    """An explicit `fmt` whose layout the keys contradict is an error naming both (e.g. an old-layout Swin given as
    `timm`, which would otherwise load partly or fail with a list of keys)."""
    found = detect_format(state)
    if found not in ACCEPTS.get(fmt, {fmt, found}):
        raise CheckpointError(f"backbone.format is {fmt!r} but the file's keys are in the {found!r} layout: set "
                              f"`backbone.format: {found}` (or auto), or use the known checkpoint entry for the file")


def convert_state_dict(state: State, net: nn.Module, fmt: str = "auto",
                       key_map: Sequence[tuple[str, str]] = ()) -> Conversion:
    """A checkpoint's state dict in `fmt` ("auto": detected from its keys), renamed to `net`'s timm layout, then
    `key_map`'s extra [regex, replacement] rules applied; an unknown format is a CheckpointError naming the known ones."""
    name = detect_format(state) if fmt == "auto" else fmt
    try:
        converter = CONVERTERS.get(name)
    except KeyError as e:
        raise CheckpointError(e.args[0]) from None
    if fmt != "auto":
        check_layout(state, fmt)
    conv = converter(state, net)
    if fmt == "auto":
        conv.format = f"auto -> {conv.format}"
    if key_map:
        extra = _rename(conv.state, conv.format, key_map)
        conv.state = extra.state
        conv.renamed = {k: extra.renamed.get(v, v) for k, v in conv.renamed.items()} | {
            k: v for k, v in extra.renamed.items() if k not in conv.renamed.values()}
        conv.dropped.update(extra.dropped)
    return conv


def load_checkpoint(net: nn.Module, path: str | Path | Located, head: str, fmt: str = "auto",
                    key_map: Sequence[tuple[str, str]] = (), expected_sha256: str | None = None) -> dict:
    """Load a local weights file or folder into `net` (weights_only, strict but for the head); returns the load
    report, whose `meta` holds what the file says about itself (provenance.file_metadata)."""
    where = path if isinstance(path, Located) else locate(path)
    path = where.weights
    digest = sha256sum(path)
    if expected_sha256 and not digest.startswith(expected_sha256.lower()):
        raise CheckpointError(f"{path}: sha256 {digest} does not match the known checkpoint's {expected_sha256}; "
                              "is it another file? (load it by its timm architecture name and `backbone.format`)")
    obj = read_weights(path)
    conv = convert_state_dict(extract_state_dict(obj, path), net, fmt, key_map)
    for k, v in net.state_dict().items():
        # BatchNorm's step counter is unused with a fixed momentum; older torch did not save it.
        if k.endswith("num_batches_tracked") and k not in conv.state:
            conv.state[k] = v
    try:
        report = load_backbone_weights(net, conv.state, head, path)
    except CheckpointError as e:
        raise CheckpointError(f"{e} [after converting the keys as format {conv.format!r}; set backbone.format "
                              f"or backbone.key_map if the file has another layout]") from None
    reasons: dict[str, int] = {}
    for why in conv.dropped.values():
        reasons[why] = reasons.get(why, 0) + 1
    report.update(file=str(path), sha256=digest, format=conv.format, renamed=len(conv.renamed),
                  rename_examples=dict(list(conv.renamed.items())[:5]), dropped=reasons,
                  dropped_examples=list(conv.dropped)[:5], imagenet_layout=conv.imagenet_layout,
                  config_file=where.config_file)
    meta = file_metadata(obj, config_metadata(where.config, where.config_file))
    if conv.mean is not None:
        meta.update(mean=conv.mean, std=conv.std)
    report["meta"] = meta
    if "mean" in meta:
        report.update(mean=meta["mean"], std=meta["std"])  # the file's own normalisation
    if "input_size" in meta:
        report["input_size"] = meta["input_size"]  # a reused roli file keeps its resize
    log.info("loaded %d tensors from %s: format %s, %d keys renamed, %d dropped (%s), new head %s",
             report["loaded"], path, conv.format, len(conv.renamed), len(conv.dropped),
             ", ".join(sorted(set(conv.dropped.values()))) or "none", report["missing_head"])
    return report
