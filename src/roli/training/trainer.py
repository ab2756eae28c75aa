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
from roli.config import Config, TrainConfig, attack_config, to_dict
from roli.data.base import Splits
from roli.device import oom_hint
from roli.distributed import barrier, check_batch, data_parallel, global_batches, sharded_loader, world
from roli.errors import TrainingFailed
from roli.evaluation.accuracy import evaluate
from roli.objectives import build_objective
from roli.precision import run_precision
from roli.training import co_guard
from roli.training.co_guard import Guard
from roli.training.loop import NonFiniteLoss, train_one_epoch
from roli.training.optim import build_optimizer, build_scheduler
from roli.training.schedules import scheduled
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
    co_guard: dict | None = None  # the catastrophic-overfitting guard's summary (results.json `co_guard`), if on


def _resume_from(ckpt_path: Path, model: Classifier, optimizer, scheduler, scaler, run_dir: Path,
                 guard: Guard | None = None) -> tuple[list[dict], dict, int]:
    """checkpoint.pt back into the model, optimiser, schedule, RNG states, fp16 scaler and the catastrophic-
    overfitting guard; returns the history so far, the best epoch's row and the number of epochs done."""
    state = load_file(ckpt_path)
    load_resume_state(model, state, ckpt_path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if guard is not None:
        guard.load(state.get("co_guard"))
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


@dataclass
class _Run:
    """What every epoch of one fit() uses: the model and its training step, optimiser, schedule, scaler, the
    objective, the validation attacks and loader, and the catastrophic-overfitting guard (None when off)."""

    model: Classifier
    cfg: Config
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    precision: object
    objective: object
    val_loader: object
    val_attacks: dict
    guard: Guard | None

    def epoch_attack(self, epoch: int) -> tuple[object, dict]:
        """Epoch `epoch`'s training attack (None: standard training, or a scheduled eps of 0: no attack pass) and
        what its history row records (the eps, step size and steps it used)."""
        if not self.cfg.train.adversarial:
            return None, {}
        base = self.guard.attack if self.guard is not None else self.cfg.attack
        ep = scheduled(base, self.cfg.threat, self.cfg.train.attack_schedule, epoch)
        atk = build_attack(ep.attack, ep.threat, self.precision.train) if ep.threat.eps > 0 else None
        return atk, ep.row()

    def state(self, epoch: int, history: list[dict], best: dict) -> dict:
        """checkpoint.pt after `epoch` epochs, with the fp16 scaler and the guard's state."""
        return {**resume_state(self.model, self.optimizer, self.scheduler, epoch, history, best),
                **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
                **({"co_guard": self.guard.state()} if self.guard is not None else {})}


def _setup(model: Classifier, cfg: Config, splits: Splits) -> _Run:
    """Build what fit() trains with (optimiser, schedule, precision, DDP wrapper, objective, validation, guard)."""
    device = next(model.parameters()).device
    precision = run_precision(cfg, device)  # train.precision / eval.precision as they run
    val_attacks = {"clean": None, "pgd": build_attack(cfg.eval.attack, cfg.threat, precision.eval)}
    on = co_guard.enabled(cfg.train.co_guard, cfg.attack, cfg.train.adversarial)
    if on:  # the guard's signal: FGSM at the target eps beside the validation PGD
        val_attacks["fgsm"] = build_attack(attack_config("fgsm"), cfg.threat, precision.eval)
    val_loader = sharded_loader(splits.val, cfg.data.eval_batch_size, shuffle=False, pin_memory=device.type == "cuda")
    steps_per_epoch = len(global_batches(len(splits.train), cfg.data.batch_size, shuffle=False, seed=0))
    optimizer = build_optimizer(model, cfg.train)
    return _Run(model, cfg, data_parallel(model, cfg, device), optimizer,  # DDP across ranks (not for the attack)
                build_scheduler(optimizer, cfg.train, steps_per_epoch), precision.train.grad_scaler(), precision,
                build_objective(cfg.train.objective), val_loader, val_attacks,
                co_guard.Guard(cfg.train.co_guard, cfg.attack) if on else None)


def _train_epoch(r: _Run, epoch: int, history: list[dict], splits: Splits, ckpt_path: Path) -> dict:
    """Train and validate epoch `epoch` (0-based); returns its history row."""
    cfg = r.cfg
    device = next(r.model.parameters()).device
    # The data order depends only on (seed, epoch), so a resumed run sees the same batches.
    loader = sharded_loader(splits.train, cfg.data.batch_size, shuffle=True, seed=cfg.run.seed * 1000 + epoch,
                            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    lr_start = r.optimizer.param_groups[0]["lr"]  # the LR of the epoch's first step
    attack, attack_row = r.epoch_attack(epoch)
    try:
        with oom_hint(f"training (epoch {epoch + 1})", "data.batch_size", cfg.data.batch_size):
            stats = train_one_epoch(r.model, loader, r.optimizer, r.scheduler, attack, _epoch_config(cfg.train, history),
                                    epoch, precision=r.precision.train, scaler=r.scaler, step_model=r.step_model,
                                    objective=r.objective)
    except NonFiniteLoss as e:
        raise _nonfinite_failure(e, ckpt_path, cfg.train) from None
    with oom_hint(f"validation (epoch {epoch + 1})", "data.eval_batch_size", cfg.data.eval_batch_size):
        val = evaluate(r.model, r.val_loader, r.val_attacks, early_stop=cfg.eval.early_stop)
    row = {"epoch": epoch + 1, "lr": lr_start, "lr_end": r.optimizer.param_groups[0]["lr"], **stats, **attack_row,
           "val_clean": val["clean"]["acc"], "val_robust": val["pgd"]["acc"],
           "val_seconds": round(sum(v["seconds"] for k, v in val.items() if k != "clean") + val["clean"]["seconds"], 2)}
    if "fgsm" in val:
        row["val_fgsm"] = val["fgsm"]["acc"]
    return row


def _roll_back(r: _Run, row: dict, history: list[dict], best: dict, ckpt_path: Path, is_main: bool) -> None:
    """After a collapse (the guard fired on `row`): the last good epoch's state back, the note for the next history
    row, and checkpoint.pt rewritten with the guard's decision (a kill now resumes as the uninterrupted run goes on)."""
    co_guard.restore(r.guard.good, r.model, r.optimizer, r.scheduler, r.scaler)
    ev = r.guard.events[-1]
    r.guard.note = (f"collapse in epoch {ev['epoch']} (val PGD {ev['val_robust']:.1f} vs FGSM {ev['val_fgsm']:.1f}): "
                    f"rolled back to epoch {ev['rolled_back_to_epoch']}, {ev['action']}")
    if is_main:
        atomic_save(r.state(row["epoch"] - 1, history, best), ckpt_path)
    barrier()


def fit(model: Classifier, cfg: Config, splits: Splits, run_dir: Path, resume: bool = False) -> FitResult:
    """Train `model` (already on its device); under torchrun every rank calls this, and only rank 0 writes."""
    w = world()
    check_batch(cfg.data.batch_size, w)
    r = _setup(model, cfg, splits)
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    history: list[dict] = []
    best: dict = {}
    epoch = 0
    if resume and ckpt_path.exists():
        history, best, epoch = _resume_from(ckpt_path, model, r.optimizer, r.scheduler, r.scaler, run_dir, r.guard)
    key = SELECT_KEY[cfg.eval.select]
    board = TensorBoard(run_dir) if cfg.run.tensorboard and w.is_main else None
    if r.guard is not None:
        r.guard.good = co_guard.snapshot(model, r.optimizer, r.scheduler, r.scaler)
    while epoch < cfg.train.epochs and not (r.guard is not None and r.guard.stopped):
        row = _train_epoch(r, epoch, history, splits, ckpt_path)
        # the guard judges epochs trained at the target eps (during an eps warm-up PGD at the target trails anyway)
        full_eps = row.get("attack_eps", cfg.threat.eps) >= cfg.threat.eps
        if r.guard is not None and full_eps and r.guard.check(row, cfg.threat):
            _roll_back(r, row, history, best, ckpt_path, w.is_main)
            continue  # the same epoch again, with the stronger attack (or the loop ends: the guard stopped)
        if r.guard is not None and r.guard.note is not None:
            row["co_guard"], r.guard.note = r.guard.note, None
        history.append(row)
        _record_epoch(row, history, run_dir, board, w.is_main, cfg.train.epochs)
        if not best or row[key] > best[key]:  # strictly greater: the first maximum wins (the same on every rank)
            best = dict(row)
            if w.is_main:
                atomic_save(model_checkpoint(model, cfg, {"epoch": epoch + 1, "val": row}), best_path)
        epoch += 1
        if w.is_main:
            atomic_save(r.state(epoch, history, best), ckpt_path)
        if r.guard is not None:
            r.guard.good = co_guard.snapshot(model, r.optimizer, r.scheduler, r.scaler)
        barrier()  # the files are complete before any rank reads them
    if board is not None:
        board.close()
    if not history:  # the guard stopped in epoch 1: there is no good epoch to keep
        raise TrainingFailed("co_guard: catastrophic overfitting in epoch 1 (val PGD accuracy collapsed relative to "
                             "FGSM) and no good epoch to keep; train with a smaller attack step (e.g. fgsm_rs step 1.0), "
                             "attack.name: nfgsm or pgd, or set train.co_guard.on_collapse: stronger")
    return FitResult(history, best, r.guard.summary() if r.guard is not None else None)
