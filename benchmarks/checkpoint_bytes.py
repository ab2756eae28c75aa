"""Bytes per run folder: best.pt and checkpoint.pt before (whole model) and after (lean) lean checkpoints.

    PYTHONPATH=src .venv/bin/python benchmarks/checkpoint_bytes.py [--arch vit_base_patch16_224 ...] [--classes 10]

A random-init timm backbone is saved to a temporary file and used as `backbone.checkpoint` (a stand-in for a
robust ImageNet checkpoint: same tensors, same bytes). For each method the model is built as a run builds it, one
optimiser step fills the optimiser state (AdamW, the `train` default: two moments per trained tensor), and the
files are written with the trainer's own functions (`model_checkpoint` for best.pt, `resume_state` for
checkpoint.pt, both through `atomic_save`): "before" = the whole model (`run.standalone_best: true` / today's
checkpoint.pt), "after" = the default. Per cell kept = what stays in the run folder once the run is complete
(before: best.pt + checkpoint.pt; after: best.pt, checkpoint.pt removed unless `run.keep_resume_state: true`).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from roli.backbones import build_model
from roli.checkpoints import atomic_save
from roli.config import load_config
from roli.training.optim import build_optimizer, build_scheduler
from roli.training.trainer import model_checkpoint, resume_state
from roli.transfer import build_transfer

ARCHS = {"vit_base_patch16_224": "ViT-B/16", "swin_base_patch4_window7_224": "Swin-B"}
METHODS = ("full_finetune", "lora", "linear_probe")


def written_bytes(obj: dict, folder: Path, name: str) -> int:
    path = folder / name
    atomic_save(obj, path)
    size = path.stat().st_size
    path.unlink()
    return size


def measure(arch: str, method: str, backbone: Path, classes: int, folder: Path) -> dict:
    cfg = load_config(data={"backbone": {"name": arch, "checkpoint": str(backbone)},
                            "data": {"name": "synthetic"}, "transfer": {"name": method}})
    torch.manual_seed(0)
    model = build_transfer(cfg.transfer).apply(build_model(cfg.backbone, classes))
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch=10)
    for p in model.parameters():  # one step: the optimiser state exists, as in every checkpoint.pt of a run
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    scheduler.step()
    extra = {"epoch": 1, "val": {"epoch": 1, "val_clean": 0.0, "val_robust": 0.0}}
    standalone = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, standalone_best=True))
    out = {
        "best_before": written_bytes(model_checkpoint(model, standalone, extra), folder, "best.pt"),
        "best_after": written_bytes(model_checkpoint(model, cfg, extra), folder, "best.pt"),
        "ckpt_before": written_bytes(resume_state(model, optimizer, scheduler, 1, [], {}, lean=False), folder,
                                     "checkpoint.pt"),
        "ckpt_after": written_bytes(resume_state(model, optimizer, scheduler, 1, [], {}, lean=True), folder,
                                    "checkpoint.pt"),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    out["kept_before"] = out["best_before"] + out["ckpt_before"]
    out["kept_after"] = out["best_after"]
    return out


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="+", default=list(ARCHS))
    ap.add_argument("--method", nargs="+", default=list(METHODS))
    ap.add_argument("--classes", type=int, default=10)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for arch in a.arch:
            import timm

            backbone = folder / f"{arch}.pth"
            torch.manual_seed(0)
            torch.save(timm.create_model(arch, pretrained=False).state_dict(), backbone)
            for method in a.method:
                rows.append((arch, method, backbone.stat().st_size, measure(arch, method, backbone, a.classes, folder)))
            backbone.unlink()
    print(f"{a.classes} classes; AdamW; bytes on disk as torch.save writes them (MB = 10^6 bytes)\n")
    print("| backbone (file) | method | trained params | best.pt before | best.pt after | checkpoint.pt before | "
          "checkpoint.pt after | per cell kept, before | per cell kept, after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for arch, method, file_bytes, r in rows:
        print(f"| {ARCHS.get(arch, arch)} ({mb(file_bytes)}) | {method} | {r['trainable']:,} | {mb(r['best_before'])} | "
              f"{mb(r['best_after'])} | {mb(r['ckpt_before'])} | {mb(r['ckpt_after'])} | {mb(r['kept_before'])} | "
              f"{mb(r['kept_after'])} |")


if __name__ == "__main__":
    main()
