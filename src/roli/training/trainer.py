"""fit(): epochs of (adversarial) training with per-epoch validation, best-robust selection, atomic
checkpoints and bit-exact resume (model, optimiser, schedule, RNG states; data order depends on seed+epoch).

best.pt and checkpoint.pt store only the trained state when the frozen rest of the model comes from a backbone
file (roli.transfer.state); `run.standalone_best: true` makes best.pt hold the whole model."""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from roli.attacks import build_attack
from roli.backbones.normalize import Classifier
from roli.checkpoints import atomic_save, load_file
from roli.config import Config, TrainConfig, to_dict
from roli.data.base import Splits
from roli.device import oom_hint
from roli.distributed import barrier, check_batch, data_parallel, global_batches, sharded_loader, world
from roli.errors import TrainingFailed
from roli.evaluation.accuracy import evaluate
from roli.precision import run_precision
from roli.training.loop import NonFiniteLoss, train_one_epoch
from roli.training.optim import build_optimizer, build_scheduler
from roli.training.tracking import TensorBoard, write_metrics_csv
from roli.transfer.state import check_backbone, load_trained_state, model_payload

log = logging.getLogger(__name__)
SELECT_KEY = {"robust": "val_robust", "clean": "val_clean", "last": "epoch"}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG state (Python, numpy, torch, CUDA), loadable with weights_only=True."""
    # numpy's key array is stored as a tensor so the checkpoint loads with weights_only=True.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved."""
    random.setstate(_tuplify(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    # weights_only loading returns lists where the RNG APIs want tuples.
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


def model_checkpoint(model: Classifier, cfg: Config, extra: dict, standalone: bool | None = None) -> dict:
    """best.pt: what `roli eval` needs to rebuild the model without the recipe. Lean (only the trained state, plus
    the backbone file's path and SHA-256; see roli.transfer.state) when part of the backbone is frozen and came from
    a file, unless `standalone` (default: `run.standalone_best`): then the whole model."""
    standalone = cfg.run.standalone_best if standalone is None else standalone
    return {"format": "roli", **model_payload(model, lean=not standalone), "config": to_dict(cfg),
            "classifier": model.head_name, "num_classes": model.head.out_features, **extra}


def resume_state(model: Classifier, optimizer, scheduler, epoch: int, history: list[dict], best: dict,
                 lean: bool = True) -> dict:
    """checkpoint.pt: the trained state (the frozen backbone is rebuilt from its file on resume), optimiser,
    schedule, RNG states and the history so far."""
    return {**model_payload(model, lean=lean), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch, "history": history,
            "best": best}


def load_resume_state(model: Classifier, state: dict, path: Path) -> None:
    """The model part of checkpoint.pt, on top of the model the run rebuilt (same backbone file, checked)."""
    if state.get("lean"):
        check_backbone(model, state["backbone"], path)
    load_trained_state(model, state["model"], path)


@dataclass
class FitResult:
    """fit()'s epoch rows and the selected (best) epoch's row."""

    history: list[dict]
    best: dict


def _resume_from(ckpt_path: Path, model: Classifier, optimizer, scheduler, scaler, run_dir: Path
                 ) -> tuple[list[dict], dict, int]:
    """checkpoint.pt back into the model, optimiser, schedule, RNG states and fp16 scaler; returns the history so
    far, the best epoch's row and the number of epochs done."""
    state = load_file(ckpt_path)
    load_resume_state(model, state, ckpt_path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    log.info("resuming %s after epoch %d", run_dir, state["epoch"])
    return state["history"], state["best"], state["epoch"]


def _epoch_config(train_cfg: TrainConfig, history: list[dict]) -> TrainConfig:
    """`train` for the next epoch: with on_nonfinite: skip, the run-wide allowance of skipped batches left."""
    left = train_cfg.max_skipped_batches - sum(r.get("skipped_batches", 0) for r in history)
    return train_cfg if left == train_cfg.max_skipped_batches else \
        dataclasses.replace(train_cfg, max_skipped_batches=max(left, 0))


def _nonfinite_failure(e: NonFiniteLoss, ckpt_path: Path, train_cfg: TrainConfig) -> TrainingFailed:
    """The error that stops a run at a non-finite loss: where its last good checkpoint is, and what to change."""
    return TrainingFailed(
        f"{e}. Training stopped; the last good checkpoint is {ckpt_path if ckpt_path.exists() else 'none'}. "
        "Lower train.lr, set train.grad_clip, or check the data"
        + ("." if train_cfg.on_nonfinite == "skip" else
           "; or set train.on_nonfinite: skip to skip such batches (up to train.max_skipped_batches).")
    )


def _record_epoch(row: dict, history: list[dict], run_dir: Path, board: TensorBoard | None, is_main: bool,
                  epochs: int) -> None:
    """The epoch's row in metrics.csv (rank 0), TensorBoard and the log."""
    if is_main:
        write_metrics_csv(history, run_dir)
    if board is not None:
        board.log(row)
    log.info("epoch %d/%d: loss %.4f, train acc %.2f, val clean %.2f, val PGD %.2f (%.0f img/s)", row["epoch"],
             epochs, row["train_loss"], row["train_acc"], row["val_clean"], row["val_robust"],
             row["train_images_per_s"])


def fit(model: Classifier, cfg: Config, splits: Splits, run_dir: Path, resume: bool = False) -> FitResult:
    """Train `model` (already on its device); under torchrun every rank calls this, and only rank 0 writes."""
    train_cfg, seed, w = cfg.train, cfg.run.seed, world()
    check_batch(cfg.data.batch_size, w)
    device = next(model.parameters()).device
    precision = run_precision(cfg, device)  # train.precision / eval.precision as they run
    scaler = precision.train.grad_scaler()  # fp16 only
    train_attack = build_attack(cfg.attack, cfg.threat, precision.train) if train_cfg.adversarial else None
    eval_attack = build_attack(cfg.eval.attack, cfg.threat, precision.eval)
    val_loader = sharded_loader(splits.val, cfg.data.eval_batch_size, shuffle=False, pin_memory=device.type == "cuda")
    steps_per_epoch = len(global_batches(len(splits.train), cfg.data.batch_size, shuffle=False, seed=0))
    step_model = data_parallel(model, cfg, device)  # DDP across ranks (the attack uses `model` itself)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, steps_per_epoch)
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    history: list[dict] = []
    best: dict = {}
    start = 0
    if resume and ckpt_path.exists():
        history, best, start = _resume_from(ckpt_path, model, optimizer, scheduler, scaler, run_dir)
    key = SELECT_KEY[cfg.eval.select]
    board = TensorBoard(run_dir) if cfg.run.tensorboard and w.is_main else None
    for epoch in range(start, train_cfg.epochs):
        # The data order depends only on (seed, epoch), so a resumed run sees the same batches.
        loader = sharded_loader(splits.train, cfg.data.batch_size, shuffle=True, seed=seed * 1000 + epoch,
                                num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
        lr_start = optimizer.param_groups[0]["lr"]  # the LR of the epoch's first step
        epoch_cfg = _epoch_config(train_cfg, history)
        try:
            with oom_hint(f"training (epoch {epoch + 1})", "data.batch_size", cfg.data.batch_size):
                stats = train_one_epoch(model, loader, optimizer, scheduler, train_attack, epoch_cfg, epoch,
                                        precision=precision.train, scaler=scaler, step_model=step_model)
        except NonFiniteLoss as e:
            raise _nonfinite_failure(e, ckpt_path, train_cfg) from None
        with oom_hint(f"validation (epoch {epoch + 1})", "data.eval_batch_size", cfg.data.eval_batch_size):
            val = evaluate(model, val_loader, {"clean": None, "pgd": eval_attack}, early_stop=cfg.eval.early_stop)
        row = {"epoch": epoch + 1, "lr": lr_start, "lr_end": optimizer.param_groups[0]["lr"], **stats,
               "val_clean": val["clean"]["acc"], "val_robust": val["pgd"]["acc"],
               "val_seconds": round(val["clean"]["seconds"] + val["pgd"]["seconds"], 2)}
        history.append(row)
        _record_epoch(row, history, run_dir, board, w.is_main, train_cfg.epochs)
        if not best or row[key] > best[key]:  # strictly greater: the first maximum wins (the same on every rank)
            best = dict(row)
            if w.is_main:
                atomic_save(model_checkpoint(model, cfg, {"epoch": epoch + 1, "val": row}), best_path)
        if w.is_main:
            atomic_save({**resume_state(model, optimizer, scheduler, epoch + 1, history, best),
                         **({"scaler": scaler.state_dict()} if scaler else {})}, ckpt_path)
        barrier()  # the files are complete before any rank reads them
    if board is not None:
        board.close()
    return FitResult(history, best)
