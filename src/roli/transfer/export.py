"""Exports others can load: a plain timm state dict (LoRA merged) or safetensors, each with a JSON sidecar.

- `timm`: the adapted backbone + head in timm's own key layout, loadable with
  `timm.create_model(arch, num_classes=C, checkpoint_path=OUT)`. LoRA is merged into the qkv weights (same function);
  adapters and prompts add modules timm's architectures do not have, so they are refused with the alternative.
  timm's model does not normalise: feed it (x - mean) / std from the sidecar.
- `safetensors`: roli's whole model (normalisation included, LoRA merged where possible) as a safetensors file.
- `roli`: roli's own standalone checkpoint (what `roli eval` and `backbone.checkpoint` read).
- `peft` (LoRA runs): a folder OUT that `peft.PeftModel.from_pretrained(timm_net, OUT)` loads onto the timm
  architecture (roli.transfer.peft_export: the q,v LoRA as a rank-2r LoRA on the fused qkv), with the sidecar inside
  as OUT/roli.json and a README.md.
The sidecar `OUT.json` holds the architecture, classes, normalisation, input size, threat model, method and the run's
metrics. Nothing is overwritten.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from roli.checkpoints import save_new
from roli.config import Config, to_dict
from roli.files import write_atomic
from roli.transfer.lora import merge_lora
from roli.transfer.peft_export import ExportError, lora_modules, write_peft

FORMATS = ("roli", "timm", "safetensors", "peft")


def timm_arch(cfg: Config) -> str:
    """The timm architecture name of the run's backbone (a known checkpoint name resolves to its architecture)."""
    from roli.backbones.known import resolve_known

    return resolve_known(cfg.backbone, need_file=False)[0].name


def merged_net(model: nn.Module, method: str) -> nn.Module:
    """A copy of the backbone network with LoRA merged; refuses modules timm's architecture does not have."""
    net, injected = copy.deepcopy((model.net, model.injected))  # one copy: `injected` keeps pointing into `net`
    net = merge_lora(net)
    alive = {id(m) for m in net.modules()}
    extra = sorted({type(m).__name__ for m in injected if id(m) in alive})
    if extra:
        raise ExportError(f"{method} adds modules ({', '.join(extra)}) that timm's architecture does not have, so a "
                          "plain timm state dict cannot hold them; export with --format safetensors or roli instead")
    return net


def sidecar(cfg: Config, model: nn.Module, ckpt: dict, results: dict | None, fmt: str) -> dict:
    """The export's JSON sidecar: architecture, classes, normalisation, input size, threat model, method, the run's
    metrics and config, and how to load the file in format `fmt`."""
    norm = model.normalize
    return {
        "format": fmt, "arch": timm_arch(cfg), "num_classes": ckpt["num_classes"], "classifier": ckpt["classifier"],
        "mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(), "input_size": norm.input_size,
        "threat": to_dict(cfg.threat), "method": cfg.transfer.name, "init": cfg.transfer.init,
        "epoch": ckpt.get("epoch"), "val": ckpt.get("val"),
        "test": (results or {}).get("test"), "roli_config": to_dict(cfg),
        "load_with": {"timm": f"timm.create_model({timm_arch(cfg)!r}, num_classes={ckpt['num_classes']}, "
                              "checkpoint_path=OUT); normalise inputs with mean/std",
                      "safetensors": "safetensors.torch.load_file(OUT): roli's Classifier state dict (normalize.* "
                                     "then net.*)",
                      "roli": "roli eval --checkpoint OUT, or backbone.checkpoint: OUT",
                      "peft": "net = timm.create_model(arch, num_classes=C); net.load_state_dict(safetensors.torch."
                              "load_file(OUT/base_model.safetensors)); peft.PeftModel.from_pretrained(net, OUT); "
                              "normalise inputs with mean/std (OUT/README.md)"}[fmt],
    }


def export(model: nn.Module, cfg: Config, ckpt: dict, output: str | Path, fmt: str = "roli",
           results: dict | None = None) -> list[Path]:
    """Write `model` (a rebuilt roli Classifier) as `fmt` to `output` plus `output`.json; returns the paths."""
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} is unknown; choose one of {list(FORMATS)}")
    output = Path(output)
    if fmt == "peft":  # a folder, its sidecar inside
        if not lora_modules(model.net):
            raise ExportError(f"--format peft holds LoRA adapters and this {cfg.transfer.name} run has none; export "
                              f"it as {' or '.join(applicable(model, cfg.transfer.name))}")
        return write_peft(model, output, sidecar(cfg, model, ckpt, results, fmt))
    side = output.with_name(output.name + ".json")
    for path in (output, side):
        if path.exists():
            raise FileExistsError(f"{path} exists; roli does not overwrite it. Choose another path or remove it.")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if fmt == "timm":
        save_new({k: v.detach().cpu().contiguous() for k, v in merged_net(model, cfg.transfer.name).state_dict().items()},
                 output)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        try:
            net = merged_net(model, cfg.transfer.name)
            state = {**{k: v for k, v in state.items() if not k.startswith("net.")},
                     **{f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()}}
        except ExportError:  # adapters/prompts: roli's own (unmerged) layout, described in the sidecar
            pass
        tensors = {k: v.contiguous() for k, v in state.items()}
        write_atomic(output, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "roli-classifier"}))
    else:
        keep = {k: ckpt[k] for k in ("format", "config", "classifier", "num_classes", "epoch", "val") if k in ckpt}
        save_new({**keep, "model": state}, output)
    save_new_text(side, json.dumps(sidecar(cfg, model, ckpt, results, fmt), indent=2))
    return [output, side]


def applicable(model: nn.Module, method: str) -> list[str]:
    """The formats `model` can be exported as (for the error naming them)."""
    try:
        merged_net(model, method)
        timm = ["timm"]
    except ExportError:
        timm = []
    return ["roli", *timm, "safetensors", *(["peft"] if lora_modules(model.net) else [])]


def save_new_text(path: Path, text: str) -> None:
    """Write a new text file; refuse to replace one (another export may have written it meanwhile)."""
    with open(path, "x") as f:
        f.write(text)
