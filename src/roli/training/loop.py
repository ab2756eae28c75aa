"""One epoch of adversarial training: the training attack crafts x' (eval mode, input gradients only), the objective
(roli.objectives: PGD-AT by default, Madry et al.; TRADES, MART) turns the clean batch and x' into the loss.

`precision` (roli.precision) autocasts the training step's forwards (the training attack carries its own, normally
the same); the loss is fp32; fp16 steps go through a GradScaler. `attack` None (standard training, or an epoch whose
scheduled eps is 0) runs no attack pass: every objective is then the clean cross-entropy."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from roli.attacks.base import Attack
from roli.config import TrainConfig
from roli.distributed import all_finite, sum_over_ranks, world
from roli.objectives import BatchMean, Objective, build_objective
from roli.precision import Precision, resolve
from roli.transfer.base import set_train_mode

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf."""


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler,
                    attack: Attack | None, cfg: TrainConfig, epoch: int, *, precision: Precision | None = None,
                    scaler: torch.amp.GradScaler | None = None, step_model: nn.Module | None = None,
                    objective: Objective | None = None) -> dict:
    """One epoch. `precision`: resolved by the caller (default: `cfg.precision` resolved here). `scaler`: the run's
    GradScaler for fp16, kept across epochs by the caller (default: a fresh one when fp16). `step_model`
    (DistributedDataParallel under torchrun) runs the training step, `model` the attack. `objective`: the loss
    (default: `cfg.objective`'s); it skips the attack pass where it does not use x' (TRADES with beta 0)."""
    device = next(model.parameters()).device
    precision = precision or resolve(cfg.precision, device, "train.precision")
    scaler = scaler if scaler is not None else precision.grad_scaler()
    step_model = step_model or model
    objective = objective or build_objective(cfg.objective)
    attack = attack if objective.needs_attack else None

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return step_model(inputs)
    w = world()
    shards = getattr(loader.batch_sampler, "shards", None) if w.distributed else None
    params = [p for p in model.parameters() if p.requires_grad]
    total_loss, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
    set_train_mode(model, True)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
    skipped = 0
    for i, (x, y) in enumerate(bar):
        batch = i + 1
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        shard = shards[i] if shards is not None else None
        # eval mode, input gradients only; train mode restored afterwards
        x_adv = attack(model, x, y, shard=shard) if attack is not None else None
        # under DDP the loss is scaled so that the step is the global batch's mean (BatchMean)
        loss, logits = objective.loss(forward, x, x_adv, y, BatchMean(shard, w.size))
        if not all_finite(loss):  # decided together: one rank stopping alone would leave the others waiting
            where = f"loss is {loss.item()} at epoch {epoch + 1}, batch {batch}" + \
                (f" of {len(loader)}" if hasattr(loader, "__len__") else "")
            skipped += 1
            if cfg.on_nonfinite == "stop":
                raise NonFiniteLoss(where)
            if skipped > cfg.max_skipped_batches:
                raise NonFiniteLoss(f"{where}: more non-finite batches than train.max_skipped_batches allows "
                                    f"({cfg.max_skipped_batches} left for this run)")
            log.warning("%s: batch skipped (train.on_nonfinite: skip)", where)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()  # the schedule keeps its place in the epoch
            continue
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
        total_loss += (loss.item() * shard.size / w.size) if shard else loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        bar.set_postfix(loss=f"{total_loss / n:.3f}", acc=f"{100 * correct / n:.1f}")
    secs = time.perf_counter() - t0
    total_loss, correct, n = sum_over_ranks([total_loss, correct, n], device)
    if n == 0:
        raise NonFiniteLoss(f"every batch of epoch {epoch + 1} had a non-finite loss")
    return {"train_loss": total_loss / n, "train_acc": 100.0 * correct / n, "train_seconds": round(secs, 2),
            "train_images_per_s": round(n / secs, 1), "skipped_batches": skipped}
