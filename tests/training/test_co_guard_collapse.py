"""Real catastrophic overfitting on a small case, and the guard catching it (slow: ~1-2 min on 2 busy cores).

FGSM-RS with a step of 2 eps (= FGSM from the ball's boundary) at eps 0.2 on 2,000 MNIST digits, a small CNN,
12 epochs. Without the guard, PGD-10 accuracy stalls at 23-33% from epoch 6 while FGSM accuracy climbs to 68% (the
collapse signature: the model learns to defeat the one-step attack only; measured 32.5% vs 67.5% at the end). With
the guard (on by default for one-step attacks) it fires in epoch 8 (PGD 25.0% vs FGSM 55.5%), rolls back to epoch 7
and trains on with PGD-2: the final model has PGD 44.5% vs FGSM 59%, not collapsed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from roli.attacks import make_attack
from roli.checkpoints import load_file
from roli.config import DataConfig, load_config
from roli.data import build_data
from roli.training.co_guard import collapsed
from roli.training.pipeline import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(900)]
EPS = 0.2
RECIPE = {
    "threat": {"eps": EPS},
    "attack": {"name": "fgsm_rs", "step": 2.0},
    "transfer": {"name": "full_finetune", "init": "ranli"},
    "train": {"epochs": 12, "lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0.0, "schedule": "constant"},
    "data": {"batch_size": 64, "eval_batch_size": 200},
    "eval": {"attack": {"name": "pgd", "steps": 10, "step_size": EPS / 4}, "select": "last"},
    "run": {"threads": 1},
}


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 49, 100), nn.ReLU(), nn.Linear(100, 10))


@pytest.fixture(scope="module")
def digits():
    splits = build_data(DataConfig(name="mnist"))
    idx = torch.randperm(len(splits.train.labels), generator=torch.Generator().manual_seed(0))[:2400]
    xs, ys = splits.train.images[idx].float() / 255, splits.train.labels[idx]
    return (TensorDataset(xs[:2000], ys[:2000]), TensorDataset(xs[2000:2200], ys[2000:2200]),
            TensorDataset(xs[2200:], ys[2200:]))


def _final_fgsm_and_pgd(run_dir, model, val) -> tuple[float, float]:
    from roli.backbones.custom import from_module

    net = from_module(model, 10, example=val[0][0][None])
    net.load_state_dict(load_file(run_dir / "best.pt")["model"])  # select: last -> the final weights
    net.eval()
    x, y = val.tensors
    accs = []
    for atk in (make_attack("fgsm", eps=EPS), make_attack("pgd", eps=EPS, steps=10, step_size=EPS / 4)):
        torch.manual_seed(0)
        with torch.no_grad():
            accs.append(100 * (net(atk(net, x, y)).argmax(1) == y).float().mean().item())
    return accs[0], accs[1]


def test_fgsm_rs_overfits_catastrophically_and_the_guard_catches_it(digits, tmp_path):
    torch.manual_seed(0)
    model = cnn()
    off = load_config(data={**RECIPE, "train": {**RECIPE["train"], "co_guard": {"enabled": False}}})
    bare = run(off, out=tmp_path, name="off", model=model, data=digits)
    pgd = [r["val_robust"] for r in bare["history"]]
    fgsm, final_pgd = _final_fgsm_and_pgd(tmp_path / "off", cnn(), digits[1])
    assert "co_guard" not in bare
    assert collapsed(final_pgd, fgsm, off.train.co_guard) and fgsm - final_pgd > 25  # the collapse signature
    assert max(pgd[5:]) - min(pgd[5:]) < 15  # PGD stalls while FGSM climbs

    guarded = run(load_config(data=RECIPE), out=tmp_path, name="on", model=model, data=digits)
    guard = guarded["co_guard"]
    assert guard["events"] and guard["events"][0]["action"] == "stronger"
    first = guard["events"][0]
    assert collapsed(first["val_robust"], first["val_fgsm"], off.train.co_guard)
    assert guard["final_attack"]["name"] == "pgd" and guard["final_attack"]["steps"] >= 2
    assert [r["epoch"] for r in guarded["history"]] == list(range(1, 13))  # the rolled-back epoch trained again
    assert "collapse in epoch" in guarded["history"][first["epoch"] - 1]["co_guard"]
    last = guarded["history"][-1]
    assert not collapsed(last["val_robust"], last["val_fgsm"], off.train.co_guard)
    assert last["val_robust"] > final_pgd + 8  # more robust than the collapsed run (measured 44.5% vs 32.5%)
