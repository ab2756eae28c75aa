"""torchrun + DDP on CPU (gloo, 2 processes): the same run as one process, killed ranks stop the job, resume works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Subprocess runs under torchrun: ~55 s at most (the first test, with the module's two runs) on a busy 2-core
# machine; the subprocesses' own limit is 600 s each.
pytestmark = pytest.mark.timeout(300)

RECIPE = """\
backbone: {name: vit_tiny_28}
data: {name: synthetic, batch_size: 64, eval_batch_size: 96}
threat: {eps: 0.1}
attack: {step_size: 0.05, steps: 2}
transfer: {name: full_finetune, init: ranli}
train: {epochs: 2, lr: 0.001, warmup_epochs: 0.5}
eval: {attack: {steps: 3, step_size: 0.05}}
run: {threads: 1}
"""
# Float tolerance: the all-reduced gradient sums two half-batch gradients (another summation order than one
# process), so weights differ in the last bits; metrics are exact counts and come out equal.
WEIGHT_ATOL = 1e-4


def torchrun(*args: str, nproc: int = 2, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def roli_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "best.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "r.yaml").write_text(RECIPE)
    one = roli_cli("run", "r.yaml", "--out", "one", cwd=tmp)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun("-m", "roli", "run", "r.yaml", "--out", "two", cwd=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp


def test_two_processes_match_one_process(one_and_two):
    a = json.loads((one_and_two / "one" / "r" / "results.json").read_text())
    b = json.loads((one_and_two / "two" / "r" / "results.json").read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert (ha["val_clean"], ha["val_robust"], ha["train_acc"]) == (hb["val_clean"], hb["val_robust"],
                                                                         hb["train_acc"])
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-6)
    assert (a["test"]["clean"], a["test"]["pgd"], a["test"]["n"]) == (b["test"]["clean"], b["test"]["pgd"],
                                                                      b["test"]["n"])
    wa, wb = _weights(one_and_two / "one" / "r"), _weights(one_and_two / "two" / "r")
    assert wa.keys() == wb.keys()
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert diff < WEIGHT_ATOL


def test_two_processes_match_one_process_with_trades(tmp_path):
    """TRADES: two training forwards per step (clean and x') and a KL term, scaled per rank like the CE (BatchMean),
    so the all-reduced step is the global batch's, as in one process."""
    recipe = RECIPE.replace("attack: {step_size: 0.05, steps: 2}", "attack: {step_size: 0.05, steps: 2, loss: kl}") \
        .replace("train: {epochs: 2,", "train: {objective: {name: trades, beta: 6.0}, epochs: 1,")
    (tmp_path / "r.yaml").write_text(recipe)
    one = roli_cli("run", "r.yaml", "--out", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun("-m", "roli", "run", "r.yaml", "--out", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "r" / "results.json").read_text()) for d in ("one", "two"))
    assert a["config"]["train"]["objective"] == {"name": "trades", "beta": 6.0} and b["world_size"] == 2
    (ha,), (hb,) = a["history"], b["history"]
    assert (ha["val_clean"], ha["val_robust"], ha["train_acc"]) == (hb["val_clean"], hb["val_robust"], hb["train_acc"])
    assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-6)
    wa, wb = _weights(tmp_path / "one" / "r"), _weights(tmp_path / "two" / "r")
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < WEIGHT_ATOL


def test_only_rank_zero_writes(one_and_two):
    assert sorted(p.name for p in (one_and_two / "two").iterdir() if p.is_dir()) == ["r"]
    log = (one_and_two / "two" / "r" / "train.log").read_text()
    assert log.count("epoch 2/2") == 1  # one log, not one per rank


def test_a_batch_that_does_not_divide_is_refused(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE.replace("batch_size: 64", "batch_size: 63"))
    out = torchrun("-m", "roli", "run", "r.yaml", "--out", "o", cwd=tmp_path)
    assert out.returncode != 0 and "does not divide over 2 processes" in out.stderr


def test_a_killed_rank_stops_the_job_and_the_run_resumes_to_the_same_result(one_and_two, tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    script = str(Path(__file__).with_name("ddp_kill.py"))
    # rank 1 dies in epoch 2 (the synthetic train split is 9 global batches: loss 12 is in epoch 2)
    killed = torchrun(script, "run", "r.yaml", "--out", "o", cwd=tmp_path,
                      extra_env={"RANK_TO_KILL": "1", "KILL_AT_LOSS": "12"})
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr or "Signal 9" in killed.stderr  # torchrun names the failed rank and signal
    run_dir = tmp_path / "o" / "r"
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1  # epoch 1 was saved
    resumed = torchrun("-m", "roli", "run", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((one_and_two / "two" / "r" / "results.json").read_text())
    b = json.loads((run_dir / "results.json").read_text())
    assert b["status"] == "complete" and a["history"][-1]["val_robust"] == b["history"][-1]["val_robust"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    wa, wb = _weights(one_and_two / "two" / "r"), _weights(run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same 2-process computation: bit-identical


def test_sharded_evaluation_equals_one_process_for_pgd_and_autoattack(one_and_two, tmp_path):
    ckpt = str(one_and_two / "one" / "r" / "best.pt")
    args = ["eval", "--checkpoint", ckpt, "--suite", "aa", "--limit", "200", "--aa", "version=custom",
            "attacks=[apgd-ce]", "n_iter=5"]
    single = roli_cli(*args, "--output", str(tmp_path / "one.json"), "--aa-state", str(tmp_path / "s1.json"),
                      cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = torchrun("-m", "roli", *args, "--output", str(tmp_path / "two.json"), "--aa-state",
                       str(tmp_path / "s2.json"), cwd=tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for name in ("clean", "fgsm", "pgd", "autoattack"):
        assert a["results"][name]["acc"] == b["results"][name]["acc"] and a["results"][name]["n"] == b["results"][
            name]["n"] == 200, name  # 3 chunks of 96, 96, 8: rank 0 attacks two, rank 1 one
    assert a["results"]["autoattack"]["after"] == b["results"]["autoattack"]["after"]
    assert sorted(p.name for p in tmp_path.glob("s2.rank*")) == ["s2.rank0-of-2.json", "s2.rank1-of-2.json"]


def test_a_sweep_runs_each_cell_under_torchrun(tmp_path):
    (tmp_path / "full_finetune.yaml").write_text(RECIPE.replace("epochs: 2", "epochs: 1"))
    (tmp_path / "grid.yaml").write_text("recipe: '{method}.yaml'\naxes: {method: [full_finetune]}\nseeds: [0]\n"
                                        "out: sw\n")
    out = roli_cli("sweep", "grid.yaml", "--nproc", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (res,) = [json.loads(p.read_text()) for p in (tmp_path / "sw").glob("*/results.json")]
    assert res["status"] == "complete" and res["world_size"] == 2
