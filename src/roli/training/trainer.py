"""fit(): epochs of (adversarial) training with per-epoch validation, best-robust selection, atomic
checkpoints and bit-exact resume (model, optimiser, schedule, RNG states; data order depends on seed+epoch)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from roli.attacks import build_attack
from roli.backbones.checkpoints import atomic_save, load_file
from roli.backbones.normalize import Classifier
from roli.config import Config, to_dict
from roli.data.base import Splits, make_loader
from roli.evaluation.accuracy import evaluate
from roli.precision import run_precision
from roli.training.loop import NonFiniteLoss, train_one_epoch
from roli.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)
SELECT_KEY = {"robust": "val_robust", "clean": "val_clean", "last": "epoch"}


class TrainingFailed(RuntimeError):
    """Training stopped (non-finite loss); the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    # numpy's key array is stored as a tensor so the checkpoint loads with weights_only=True.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuplify(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    # weights_only loading returns lists where the RNG APIs want tuples.
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


def model_checkpoint(model: Classifier, cfg: Config, extra: dict) -> dict:
    """What `roli eval` needs to rebuild the model without the recipe."""
    return {"format": "roli", "model": model.state_dict(), "config": to_dict(cfg),
            "classifier": model.net.roli_classifier, "num_classes": model.head.out_features, **extra}


@dataclass
class FitResult:
    history: list[dict]
    best: dict


def fit(model: Classifier, cfg: Config, splits: Splits, run_dir: Path, resume: bool = False) -> FitResult:
    train_cfg, seed = cfg.train, cfg.run.seed
    precision = run_precision(cfg, next(model.parameters()).device)  # train.precision / eval.precision as they run
    scaler = precision.train.grad_scaler()  # fp16 only
    train_attack = build_attack(cfg.attack, cfg.threat, precision.train) if train_cfg.adversarial else None
    eval_attack = build_attack(cfg.eval.attack, cfg.threat, precision.eval)
    val_loader = make_loader(splits.val, cfg.data.eval_batch_size, shuffle=False)
    steps_per_epoch = len(make_loader(splits.train, cfg.data.batch_size, shuffle=True))
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, steps_per_epoch)
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    history: list[dict] = []
    best: dict = {}
    start = 0
    if resume and ckpt_path.exists():
        state = load_file(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        history, best, start = state["history"], state["best"], state["epoch"]
        log.info("resuming %s after epoch %d", run_dir, start)
    key = SELECT_KEY[cfg.eval.select]
    for epoch in range(start, train_cfg.epochs):
        # The data order depends only on (seed, epoch), so a resumed run sees the same batches.
        loader = make_loader(splits.train, cfg.data.batch_size, shuffle=True, seed=seed * 1000 + epoch,
                             num_workers=cfg.data.num_workers)
        lr_start = optimizer.param_groups[0]["lr"]  # the LR of the epoch's first step
        try:
            stats = train_one_epoch(model, loader, optimizer, scheduler, train_attack, train_cfg, epoch,
                                    precision=precision.train, scaler=scaler)
        except NonFiniteLoss as e:
            raise TrainingFailed(
                f"{e}. Training stopped; the last good checkpoint is {ckpt_path if ckpt_path.exists() else 'none'}. "
                "Lower train.lr, set train.grad_clip, or check the data."
            ) from None
        val = evaluate(model, val_loader, {"clean": None, "pgd": eval_attack}, early_stop=cfg.eval.early_stop)
        row = {"epoch": epoch + 1, "lr": lr_start, "lr_end": optimizer.param_groups[0]["lr"], **stats,
               "val_clean": val["clean"]["acc"], "val_robust": val["pgd"]["acc"],
               "val_seconds": round(val["clean"]["seconds"] + val["pgd"]["seconds"], 2)}
        history.append(row)
        log.info("epoch %d/%d: loss %.4f, train acc %.2f, val clean %.2f, val PGD %.2f (%.0f img/s)", epoch + 1,
                 train_cfg.epochs, row["train_loss"], row["train_acc"], row["val_clean"], row["val_robust"],
                 row["train_images_per_s"])
        if not best or row[key] > best[key]:  # strictly greater: the first maximum wins
            best = dict(row)
            atomic_save(model_checkpoint(model, cfg, {"epoch": epoch + 1, "val": row}), best_path)
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                     "history": history, "best": best, **({"scaler": scaler.state_dict()} if scaler else {})}, ckpt_path)
    return FitResult(history, best)
