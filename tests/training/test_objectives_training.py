"""The objectives inside runs: TRADES with beta 0 is clean training bit for bit, every objective trains under each
transfer method, and a TRADES run with an eps schedule resumes bit-identically after an interruption."""

from __future__ import annotations

import pytest
import torch

from roli.training.pipeline import run
from training.test_trainer import _assert_same_run, _interrupt_in_epoch_2

pytestmark = pytest.mark.usefixtures("one_thread")
TRADES = ["train.objective={name: trades, beta: 6.0}", "attack.loss=kl", "attack.select=last"]


def _weights(path):
    return torch.load(path / "best.pt", weights_only=True)["model"]


def test_trades_with_beta_zero_is_clean_training_bit_for_bit(fast_cfg, tmp_path):
    zero = run(fast_cfg(["train.epochs=1", "train.objective={name: trades, beta: 0}", "attack.loss=kl"]),
               out=tmp_path, name="zero")
    clean = run(fast_cfg(["train.epochs=1", "train.adversarial=false"]), out=tmp_path, name="clean")
    assert zero["history"][0]["train_loss"] == clean["history"][0]["train_loss"]
    wa, wb = _weights(tmp_path / "zero"), _weights(tmp_path / "clean")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("method", ["linear_probe", "lora", "full_finetune"])
def test_every_objective_trains_under_each_method(fast_cfg, tmp_path, method):
    losses = {}
    for name, extra in (("pgd_at", []), ("trades", TRADES), ("mart", ["train.objective={name: mart, lam: 5.0}"])):
        res = run(fast_cfg(["train.epochs=1", f"transfer.name={method}", "data.train_limit=32", *extra]),
                  out=tmp_path, name=name)
        assert res["status"] == "complete" and res["config"]["train"]["objective"]["name"] == name
        losses[name] = res["history"][0]["train_loss"]
    assert all(v > 0 for v in losses.values()) and len(set(losses.values())) == 3  # three different losses


def test_a_trades_run_with_an_eps_schedule_resumes_bit_identically(fast_cfg, tmp_path, monkeypatch):
    cfg = fast_cfg(["train.epochs=3", "run.keep_resume_state=true", *TRADES,
                    "train.attack_schedule.eps={name: linear, start: 0.5, epochs: 2}"])
    full = run(cfg, out=tmp_path / "full", name="r")
    assert [r["attack_eps"] for r in full["history"]] == pytest.approx([0.05, 0.075, 0.1])
    run_dir = _interrupt_in_epoch_2(cfg, tmp_path / "cut", monkeypatch)
    _assert_same_run(full, tmp_path / "full" / "r", run(cfg, resume=run_dir), run_dir)
