"""metrics.csv beside every run, TensorBoard on request."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from roli.config import ConfigError
from roli.training.pipeline import run
from roli.training.tracking import write_metrics_csv


def test_every_run_writes_metrics_csv_with_the_history(finished_run):
    run_dir, res, _ = finished_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == len(res["history"]) == 2
    for row, h in zip(rows, res["history"]):
        assert set(row) == set(h) and int(row["epoch"]) == h["epoch"]
        assert float(row["val_robust"]) == h["val_robust"] and float(row["train_loss"]) == pytest.approx(h["train_loss"])


def test_metrics_csv_is_replaced_whole(tmp_path):
    write_metrics_csv([{"epoch": 1, "a": 1.0}], tmp_path)
    write_metrics_csv([{"epoch": 1, "a": 1.0}, {"epoch": 2, "a": 2.0, "b": 3}], tmp_path)  # a new column later
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["b"] == "3" and rows[0]["b"] == ""
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_is_a_clear_error(fast_cfg, tmp_path):
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        run(fast_cfg(["run.tensorboard=true", "train.epochs=1"]), out=tmp_path, name="tb")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_writes_event_files(fast_cfg, tmp_path):
    run(fast_cfg(["run.tensorboard=true", "train.epochs=1"]), out=tmp_path, name="tb")
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow  # torch.compile takes ~30 s on 2 cores
def test_compile_switch_keeps_the_checkpoint_keys(fast_cfg, tmp_path):
    import torch

    res = run(fast_cfg(["run.compile=true", "train.epochs=1", "transfer.name=linear_probe"]), out=tmp_path, name="c")
    keys = set(torch.load(tmp_path / "c" / "best.pt", weights_only=True)["model"])
    assert res["status"] == "complete" and not any("_orig_mod" in k for k in keys)


def test_outside_a_terminal_each_evaluation_logs_one_line(fast_cfg, tmp_path, caplog):
    """Batch jobs have no progress bars: the log says what each epoch and each evaluation measured."""
    with caplog.at_level("INFO", logger="roli"):
        run(fast_cfg(["train.epochs=1"]), out=tmp_path, name="log")
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 1/1: loss") for m in lines)
    evals = [m for m in lines if m.startswith("pgd: clean") and "robust" in m]
    assert len(evals) == 2  # validation and test
