"""`roli export --format peft`: a LoRA run as a peft adapter folder, so its adapters leave roli for the peft
ecosystem (`peft.PeftModel.from_pretrained(timm_net, OUT)`), without roli importing peft.

roli's LoRAQKV adapts the q and v slices of timm's fused `qkv` Linear; peft can only adapt the whole Linear. The two
are the same function: q,v LoRA of rank r is a LoRA of rank 2r on `qkv` with

    A = [A_q; A_v]  (2r x d),   B = [[B_q, 0], [0, 0], [0, B_v]]  (3d x 2r: the key rows are zero),

and peft's scaling lora_alpha / r_peft equals roli's alpha / r when lora_alpha = (alpha / r) * 2r. Both apply one
dropout to the input of all slices, so lora_dropout is roli's dropout. The trained head travels as peft's
`modules_to_save` (its keys as peft saves a ModulesToSaveWrapper: `base_model.model.head.weight`). Every other
LoRA target (a LoRALayer: a whole Linear, e.g. proj, fc1, fc2, or a 1x1 Conv2d) is a standard peft LoRA of rank r
(a conv's as peft's Conv2d LoRA with 1x1 kernels); where ranks or alphas differ (2r on qkv, r on fc1), the config's
rank_pattern / alpha_pattern say so. A model with anything else trained, or a LoRA module of an unknown kind, is
refused (ExportError naming it), never written with parts missing.

The folder OUT holds:
- adapter_config.json, adapter_model.safetensors: the adapter, as `PeftModel.save_pretrained` writes it;
- base_model.safetensors: the frozen backbone in timm's own key layout (LoRA not merged), the base the adapter
  belongs on (roli's backbone may come from a file timm cannot read directly, or from no file at all);
- README.md (how to load it) and roli.json (the export sidecar: architecture, classes, normalisation, input size,
  threat model, the run's metrics). peft wraps the bare timm network: roli's input normalisation and resize are not
  in it, so the user applies them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from roli.errors import CheckpointError
from roli.transfer.lora import LORA_MODULES, LoRALayer, LoRAQKV

FILES = ("adapter_config.json", "adapter_model.safetensors", "base_model.safetensors", "README.md", "roli.json")


class ExportError(CheckpointError):
    """The model cannot be written in the asked format; the message names one that works. (Defined in this, the
    lower of the two export modules, so that roli.transfer.export, which imports this one, shares it.)"""


def lora_modules(net: nn.Module) -> dict[str, nn.Module]:
    """The LoRA wrappers in `net` by module path (empty for a run of another method)."""
    return {name: m for name, m in net.named_modules() if isinstance(m, LORA_MODULES)}


def fused_qkv(m: LoRAQKV) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, scale) of the one peft LoRA on the whole fused qkv Linear that equals `m`'s q/k/v-slice updates:
    A stacks each target's A, B is block-diagonal over the [q | k | v] rows (untargeted slices stay zero)."""
    r, d = m.rank, m.slice_dim
    a = torch.cat([m.lora_A[t].detach() for t in m.targets])
    b = a.new_zeros(3 * d, r * len(m.targets))
    for i, t in enumerate(m.targets):
        s = "qkv".index(t) * d  # qkv's output is [q | k | v]
        b[s:s + d, i * r:(i + 1) * r] = m.lora_B[t].detach()
    return a, b, m.scale


def whole_layer(m: LoRALayer) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, scale) of a LoRALayer as peft holds it: a Linear's A and B as they are, a 1x1 conv's as peft's
    Conv2d LoRA holds them (lora_A a conv with the base's stride, lora_B a 1x1 conv: (r, in, 1, 1), (out, r, 1, 1))."""
    a, b = m.lora_A.detach(), m.lora_B.detach()
    if m.conv:
        a, b = a[:, :, None, None], b[:, :, None, None]
    return a, b, m.scale


# How each kind of roli LoRA module becomes a standard peft LoRA: (lora_A.weight, lora_B.weight, alpha / r).
MAPPERS = {LoRAQKV: fused_qkv, LoRALayer: whole_layer}


def _dropout(m: nn.Module) -> float:
    return m.drop.p if isinstance(m.drop, nn.Dropout) else 0.0


def adapter(net: nn.Module, head: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """peft's adapter_config.json fields and adapter_model.safetensors tensors for the LoRA modules of `net` (a timm
    network) and its trained head at module path `head`."""
    mods = lora_modules(net)
    check_trainable(net, mods, head)
    tensors, ranks, alphas = {}, {}, {}
    for path, m in mods.items():
        mapper = MAPPERS.get(type(m))
        if mapper is None:
            raise ExportError(f"--format peft cannot map the LoRA module {path} ({type(m).__name__}) to peft; export "
                              "with --format safetensors or roli instead")
        a, b, scale = mapper(m)
        tensors[f"base_model.model.{path}.lora_A.weight"] = a
        tensors[f"base_model.model.{path}.lora_B.weight"] = b
        ranks[path], alphas[path] = a.shape[0], scale * a.shape[0]
    drops = {_dropout(m) for m in mods.values()}
    if len(drops) > 1:
        raise ExportError(f"--format peft has one lora_dropout, but this model's LoRA modules use {sorted(drops)}; "
                          "export with --format safetensors or roli instead")
    for k, v in net.get_submodule(head).state_dict().items():
        tensors[f"base_model.model.{head}.{k}"] = v.detach()
    r, alpha = ranks[next(iter(mods))], alphas[next(iter(mods))]
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "revision": None,
        "inference_mode": True, "auto_mapping": {"base_model_class": type(net).__name__,
                                                 "parent_library": type(net).__module__},
        "r": r, "lora_alpha": alpha, "lora_dropout": drops.pop(), "target_modules": sorted(mods),
        "rank_pattern": patterns(ranks, r), "alpha_pattern": patterns(alphas, alpha),
        "modules_to_save": [head], "fan_in_fan_out": False, "bias": "none", "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
    }
    return config, {k: v.cpu().contiguous() for k, v in tensors.items()}


def patterns(values: dict[str, float], default: float) -> dict[str, float]:
    """peft's rank_pattern / alpha_pattern for the modules whose value is not `default`, keyed by their last name
    (`fc1`): peft matches a key as the end of a module path after a dot, in every version."""
    by_leaf: dict[str, set[float]] = {}
    for path, v in values.items():
        by_leaf.setdefault(path.rsplit(".", 1)[-1], set()).add(v)
    mixed = sorted(leaf for leaf, vs in by_leaf.items() if len(vs) > 1)
    if mixed:
        raise ExportError(f"--format peft: the LoRA modules named {mixed[0]!r} differ in rank or alpha, which peft's "
                          "config cannot express; export with --format safetensors or roli instead")
    return {re.escape(leaf): v for leaf, (v,) in by_leaf.items() if v != default}


def check_trainable(net: nn.Module, mods: dict[str, nn.Module], head: str) -> None:
    """Refuse a model whose trained parameters are more than LoRA matrices and the head: peft's LoRA file would
    silently drop them."""
    lora = {id(p) for m in mods.values() for p in m.lora_parameters()}
    head_params = {id(p) for p in net.get_submodule(head).parameters()}
    extra = [n for n, p in net.named_parameters() if p.requires_grad and id(p) not in lora | head_params]
    if extra:
        raise ExportError(f"--format peft holds LoRA matrices and the head, but {extra[0]} ({len(extra)} tensors) "
                          "trained too; export with --format safetensors or roli instead")


def base_state(net: nn.Module, mods: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The frozen backbone in timm's key layout: each LoRA wrapper's `base_layer` in its place, no LoRA tensors."""
    out = {}
    for k, v in net.state_dict().items():
        owner = next((p for p in mods if k.startswith(f"{p}.")), None)
        if owner is not None:
            rest = k[len(owner) + 1:]
            if not rest.startswith("base_layer."):
                continue  # a LoRA matrix (it is in the adapter)
            k = f"{owner}.{rest[len('base_layer.'):]}"
        out[k] = v.detach().cpu().contiguous()
    return out


def model_card(side: dict, config: dict) -> str:
    """README.md of the folder: what it is and how to load it outside roli."""
    c = side["num_classes"]
    mean, std = ([float(f"{v:.6g}") for v in side[k]] for k in ("mean", "std"))  # float32 noise off
    test = json.dumps(side["test"]) if side["test"] else "not recorded"
    resize = f", resized (bilinear) to {side['input_size']}x{side['input_size']}" if side["input_size"] else ""
    return f"""---
library_name: peft
tags: [roli, lora, adversarial-robustness, timm]
---
# {side['arch']} + LoRA ({side['method']}, exported by roli)

A peft LoRA adapter (rank {config['r']}, lora_alpha {config['lora_alpha']:g}, on {len(config['target_modules'])} \
modules) and the trained {c}-class head (`modules_to_save`) for the timm architecture `{side['arch']}`, trained with \
roli under the threat model {json.dumps(side['threat'])}. Test metrics of the run: {test}.

```python
import timm, torch
from peft import PeftModel
from safetensors.torch import load_file

net = timm.create_model("{side['arch']}", num_classes={c})  # roli's own architectures: `import roli.backbones` first
net.load_state_dict(load_file("OUT/base_model.safetensors"))  # the frozen backbone the adapter belongs on
model = PeftModel.from_pretrained(net, "OUT").eval()
mean = torch.tensor({mean}).view(1, -1, 1, 1)
std = torch.tensor({std}).view(1, -1, 1, 1)
logits = model((x - mean) / std)  # x: pixels in [0, 1]{resize}
```

The network does not normalise: roli kept `(x - mean) / std` (and, for grey images on a colour backbone, channel
repetition; for `input_size`, a bilinear resize) outside it, and attacks measured eps in [0, 1] pixels. roli.json
holds the rest (the roli config, validation and test metrics).
"""


def write_peft(model: nn.Module, output: str | Path, side: dict) -> list[Path]:
    """Write the LoRA Classifier `model` as the peft adapter folder `output` (FILES; `side` is roli.json), filled
    beside it and renamed into place; an existing `output` is never touched."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; roli does not overwrite it. Choose another path or remove it.")
    from safetensors.torch import save_file

    net, head = model.net, model.head_name
    config, tensors = adapter(net, head)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        (tmp / FILES[0]).write_text(json.dumps(config, indent=2))
        save_file(tensors, str(tmp / FILES[1]), metadata={"format": "pt"})
        save_file(base_state(net, lora_modules(net)), str(tmp / FILES[2]), metadata={"format": "pt"})
        (tmp / FILES[3]).write_text(model_card(side, config))
        (tmp / FILES[4]).write_text(json.dumps({**side, "peft": config}, indent=2))
        umask = os.umask(0)
        os.umask(umask)
        for f in FILES:  # mkdtemp makes a 0700 folder: keep the user's usual permissions
            os.chmod(tmp / f, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        tmp.rename(output)  # fails if a non-empty `output` appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [output / f for f in FILES]
