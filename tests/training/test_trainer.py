"""fit() through pipeline.run(): the run folder, best-epoch selection, bit-exact resume and NaN handling."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from roli.backbones import build_model
from roli.checkpoints import load_file
from roli.config import load_config, to_dict
from roli.errors import CheckpointError
from roli.objectives import base as objectives_base
from roli.training import trainer
from roli.training.optim import lr_multiplier
from roli.training.pipeline import run
from roli.training.trainer import TrainingFailed
from roli.transfer import build_transfer

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ("train_seconds", "train_images_per_s", "val_seconds")


def _numbers(history: list[dict]) -> list[dict]:
    """History without wall-clock fields."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _first_argmax(values: list[float]) -> int:
    return values.index(max(values)) + 1


def read_checkpoint(path):
    """Inspect a checkpoint.pt with roli's own safe loader (weights_only=True)."""
    return load_file(path)


# --------------------------------------------------------------------------- the finished run's folder


def test_results_json_records_the_run(finished_run):
    run_dir, res, cfg = finished_run
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == res
    assert res["status"] == "complete"
    assert res["config"] == to_dict(cfg)
    assert res["seed"] == cfg.run.seed == 0
    assert {"roli", "python", "torch", "timm", "numpy", "torchvision"} <= set(res["versions"])
    assert res["versions"]["torch"] == torch.__version__
    assert res["method"] == "full_finetune" and res["init"] == "ranli" and res["stage1"] is None
    assert res["data"]["train_size"] == 64 and res["data"]["val_size"] == 32 and res["data"]["test_size"] == 32
    assert res["params"]["trainable"] == res["params"]["total"] > 0
    assert res["seconds"] > 0


def test_history_has_one_row_per_epoch(finished_run):
    _, res, cfg = finished_run
    hist = res["history"]
    assert [r["epoch"] for r in hist] == list(range(1, cfg.train.epochs + 1))
    for row in hist:
        for k in ("train_loss", "train_acc", "val_clean", "val_robust", "lr", "train_seconds",
                  "train_images_per_s", "val_seconds"):
            assert isinstance(row[k], (int, float)) and math.isfinite(row[k]), k
        assert row["train_loss"] > 0
        assert 0 <= row["val_clean"] <= 100 and 0 <= row["val_robust"] <= 100
        # accuracies are multiples of 100/32 on 32 validation images
        assert (row["val_clean"] * 32 / 100) == pytest.approx(round(row["val_clean"] * 32 / 100))
        assert row["train_seconds"] > 0 and row["train_images_per_s"] > 0
    # `lr` is the LR of the epoch's first step, `lr_end` the one after its last step
    # (2 steps per epoch, warmup 0.5 epoch = 1 step); no epoch trains at LR 0 (protocol B5).
    steps, total = 2, 2 * cfg.train.epochs
    for row in hist:
        assert row["lr"] == pytest.approx(cfg.train.lr * lr_multiplier((row["epoch"] - 1) * steps, total, 1, cfg.train))
        assert row["lr_end"] == pytest.approx(cfg.train.lr * lr_multiplier(row["epoch"] * steps, total, 1, cfg.train))
        assert row["lr"] > 0


def test_selected_epoch_is_the_first_best_val_robust(finished_run):
    run_dir, res, _ = finished_run
    hist = res["history"]
    sel = _first_argmax([r["val_robust"] for r in hist])
    assert res["selected_epoch"] == sel
    assert res["best_val"] == {"clean": hist[sel - 1]["val_clean"], "robust": hist[sel - 1]["val_robust"]}
    best = load_file(run_dir / "best.pt")
    assert best["format"] == "roli" and best["epoch"] == sel
    assert best["val"]["val_robust"] == hist[sel - 1]["val_robust"]


def test_test_scores_and_attack_settings(finished_run):
    _, res, cfg = finished_run
    test = res["test"]
    assert test["n"] == 32
    for k in ("clean", "pgd"):
        assert 0 <= test[k] <= 100 and (test[k] * 32 / 100) == pytest.approx(round(test[k] * 32 / 100))
    assert test["attack"] == to_dict(cfg.eval.attack)
    assert test["attack"]["steps"] == cfg.eval.attack.steps == 3 and test["threat"] == {"norm": "linf", "eps": 0.1}


def test_run_folder_files(finished_run):
    run_dir, res, cfg = finished_run
    assert Path(res["run_dir"]) == run_dir and run_dir.name == "shared"
    for f in ("best.pt", "config.yaml", "results.json", "train.log"):
        assert (run_dir / f).is_file(), f
    assert not (run_dir / "checkpoint.pt").exists()  # the resume state goes once results.json says complete
    assert not cfg.run.keep_resume_state
    assert load_config(run_dir / "config.yaml") == cfg
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob("*.tmp"))  # atomic writes leave no temp files


# --------------------------------------------------------------------------- selection (scripted validation)


SCRIPT_CLEAN = [70.0, 40.0, 70.0]
SCRIPT_ROBUST = [10.0, 30.0, 30.0]


@pytest.mark.parametrize("select, expected", [("robust", 2), ("clean", 1), ("last", 3)])
def test_selection_keeps_the_first_best_epoch_weights(fast_cfg, tmp_path, monkeypatch, select, expected):
    scores = iter(zip(SCRIPT_CLEAN, SCRIPT_ROBUST))

    def scripted(model, loader, attacks, **kwargs):
        clean, robust = next(scores)
        return {"clean": {"acc": clean, "n": 32, "seconds": 0.0}, "pgd": {"acc": robust, "n": 32, "seconds": 0.0}}

    snapshots = []
    real_epoch = trainer.train_one_epoch

    def recording(model, *args, **kwargs):
        out = real_epoch(model, *args, **kwargs)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(trainer, "evaluate", scripted)
    monkeypatch.setattr(trainer, "train_one_epoch", recording)
    res = run(fast_cfg(["train.epochs=3", f"eval.select={select}"]), out=tmp_path, name="sel")
    assert res["selected_epoch"] == expected
    assert res["best_val"] == {"clean": SCRIPT_CLEAN[expected - 1], "robust": SCRIPT_ROBUST[expected - 1]}
    best = load_file(tmp_path / "sel" / "best.pt")
    assert best["epoch"] == expected
    assert len(snapshots) == 3
    for k, v in best["model"].items():
        assert torch.equal(v, snapshots[expected - 1][k]), k
    if expected < 3:  # and they are not simply the last weights
        assert any(not torch.equal(v, snapshots[-1][k]) for k, v in best["model"].items())


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def uninterrupted(fast_cfg, tmp_path_factory):
    cfg = fast_cfg(["train.epochs=3", "run.keep_resume_state=true"])  # kept, to compare it with a resumed run's
    out = tmp_path_factory.mktemp("uninterrupted")
    return cfg, run(cfg, out=out, name="r"), out / "r"


def test_checkpoint_pt_is_kept_with_keep_resume_state(uninterrupted):
    cfg, res, run_dir = uninterrupted
    ckpt = read_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["epoch"] == cfg.train.epochs
    assert ckpt["history"] == res["history"]
    assert "lean" not in ckpt  # a random-init backbone: nothing could rebuild a frozen part, the whole model


def _interrupt_in_epoch_2(cfg, out: Path, monkeypatch) -> Path:
    """Run until one optimiser step into epoch 2, then raise KeyboardInterrupt (Ctrl-C); returns the run folder."""
    real_epoch = trainer.train_one_epoch
    calls = []

    def killed_in_epoch_2(model, loader, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            def one_batch_then_interrupt():
                yield next(iter(loader))
                raise KeyboardInterrupt

            return real_epoch(model, one_batch_then_interrupt(), *args, **kwargs)
        return real_epoch(model, loader, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(trainer, "train_one_epoch", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out=out, name="r")
    assert len(calls) == 2
    run_dir = out / "r"
    assert read_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    return run_dir


def _assert_same_run(full: dict, full_dir: Path, resumed: dict, run_dir: Path) -> None:
    assert resumed["status"] == "complete" and Path(resumed["run_dir"]) == run_dir
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["r"]  # resumed in place, no new folder
    a, b = read_checkpoint(full_dir / "checkpoint.pt"), read_checkpoint(run_dir / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after resume"
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][pid][k])), (pid, k)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert _numbers(full["history"]) == _numbers(resumed["history"])
    assert full["selected_epoch"] == resumed["selected_epoch"]
    assert full["test"]["clean"] == resumed["test"]["clean"] and full["test"]["pgd"] == resumed["test"]["pgd"]
    best_a, best_b = load_file(full_dir / "best.pt"), load_file(run_dir / "best.pt")
    for k in best_a["model"]:
        assert torch.equal(best_a["model"][k], best_b["model"][k]), k


def test_resume_is_bit_identical(uninterrupted, tmp_path, monkeypatch):
    cfg, full, full_dir = uninterrupted
    run_dir = _interrupt_in_epoch_2(cfg, tmp_path, monkeypatch)
    resumed = run(cfg, resume=run_dir)
    _assert_same_run(full, full_dir, resumed, run_dir)


def test_resume_state_is_bit_identical_when_the_checkpoint_can_be_read(uninterrupted, tmp_path, monkeypatch):
    """The resume logic itself (weights, optimiser, schedule, RNG, data order), with the checkpoint read by a
    trusting loader so that the load_file bug above does not hide it."""
    cfg, full, full_dir = uninterrupted
    run_dir = _interrupt_in_epoch_2(cfg, tmp_path, monkeypatch)
    resumed = run(cfg, resume=run_dir)
    _assert_same_run(full, full_dir, resumed, run_dir)


@pytest.fixture(scope="module")
def uninterrupted_lean(fast_cfg, tmp_path_factory):
    """LoRA on a backbone FILE: best.pt and checkpoint.pt hold only the trained state."""
    import shutil

    out = tmp_path_factory.mktemp("uninterrupted_lean")
    bb = out / "backbone.pt"
    shutil.copy(Path(trainer.__file__).parents[1] / "checkpoints" / "vit_tiny_28_fmnist_robust.pt", bb)
    cfg = fast_cfg(["train.epochs=3", "run.keep_resume_state=true", "transfer.name=lora",
                    f"backbone.checkpoint={bb}"])
    return cfg, run(cfg, out=out, name="r"), out / "r", bb


def test_resume_of_a_lean_run_is_bit_identical(uninterrupted_lean, tmp_path, monkeypatch):
    cfg, full, full_dir, _ = uninterrupted_lean
    run_dir = _interrupt_in_epoch_2(cfg, tmp_path, monkeypatch)
    state = read_checkpoint(run_dir / "checkpoint.pt")
    assert state["lean"] and not any("base_layer" in k for k in state["model"])  # no frozen backbone tensor
    resumed = run(cfg, resume=run_dir)
    _assert_same_run(full, full_dir, resumed, run_dir)


def test_resume_of_a_lean_run_refuses_a_changed_backbone_file(uninterrupted_lean, tmp_path, monkeypatch):
    cfg, _, _, bb = uninterrupted_lean
    import dataclasses

    own = tmp_path / "backbone.pt"
    own.write_bytes(bb.read_bytes())
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, checkpoint=str(own)))
    run_dir = _interrupt_in_epoch_2(cfg, tmp_path / "out", monkeypatch)
    weights = load_file(own)
    weights["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights["model"].items()}
    torch.save(weights, own)  # same path, other weights
    with pytest.raises(CheckpointError, match="trained on the backbone"):
        run(cfg, resume=run_dir)


def test_resume_needs_a_run_folder(fast_cfg, tmp_path):
    from roli.training.pipeline import RunDirError

    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="config.yaml"):
        run(fast_cfg(), resume=tmp_path / "empty")


# --------------------------------------------------------------------------- non-finite loss


def test_nan_loss_fails_cleanly_and_keeps_the_last_checkpoint(fast_cfg, tmp_path, monkeypatch):
    cfg = fast_cfg()
    real_epoch = trainer.train_one_epoch

    def nan_cross_entropy(logits, y, *args, **kwargs):
        return F.cross_entropy(logits, y, *args, **kwargs) * float("nan")

    def nan_from_epoch_2(model, loader, optimizer, scheduler, attack, train_cfg, epoch, **kwargs):
        if epoch == 1:  # 0-based: the second epoch's training loss is NaN
            # the objectives compute the cross-entropy (roli.objectives.base.BatchMean.ce)
            monkeypatch.setattr(objectives_base, "F", types.SimpleNamespace(cross_entropy=nan_cross_entropy))
        return real_epoch(model, loader, optimizer, scheduler, attack, train_cfg, epoch, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", nan_from_epoch_2)
    with pytest.raises(TrainingFailed) as e:
        run(cfg, out=tmp_path, name="nan")
    run_dir = tmp_path / "nan"
    msg = str(e.value)
    assert "nan" in msg and "epoch 2" in msg
    assert str(run_dir / "checkpoint.pt") in msg and "train.lr" in msg  # where the good weights are, and the fix

    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "failed" and res["error"] == msg

    ckpt = read_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1
    model = build_transfer(cfg.transfer).apply(build_model(cfg.backbone, 4))
    model.load_state_dict(ckpt["model"], strict=True)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert load_file(run_dir / "best.pt")["epoch"] == 1
