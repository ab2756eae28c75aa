"""One epoch of PGD adversarial training (Madry et al.): the whole batch is replaced by adversarial examples.

`precision` (roli.precision) autocasts the training step's forward (the training attack carries its own, normally
the same); the loss is fp32; fp16 steps go through a GradScaler."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from roli.attacks.base import Attack
from roli.config import TrainConfig
from roli.precision import Precision, resolve
from roli.transfer.base import set_train_mode


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf."""


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler,
                    attack: Attack | None, cfg: TrainConfig, epoch: int, *, precision: Precision | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> dict:
    """`precision`: resolved by the caller (default: `cfg.precision` resolved here). `scaler`: the run's GradScaler
    for fp16, kept across epochs by the caller (default: a fresh one when fp16)."""
    device = next(model.parameters()).device
    precision = precision or resolve(cfg.precision, device, "train.precision")
    scaler = scaler if scaler is not None else precision.grad_scaler()
    params = [p for p in model.parameters() if p.requires_grad]
    total_loss, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
    set_train_mode(model, True)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if attack is not None:
            x = attack(model, x, y)  # eval mode, input gradients only; train mode restored afterwards
        with precision.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch + 1}, batch {n // len(y) + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
        else:  # fp16: scaled backward; a step with inf/NaN gradients is skipped and the scale lowered
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        bar.set_postfix(loss=f"{total_loss / n:.3f}", acc=f"{100 * correct / n:.1f}")
    secs = time.perf_counter() - t0
    return {"train_loss": total_loss / n, "train_acc": 100.0 * correct / n, "train_seconds": round(secs, 2),
            "train_images_per_s": round(n / secs, 1)}
