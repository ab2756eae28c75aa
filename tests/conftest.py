"""Seeded CPU fixtures: tiny models, the synthetic dataset, and no network access."""

from __future__ import annotations

import pytest
import torch

import netguard
from roli.config import load_config

TINY = {
    "backbone": {"name": "vit_tiny_28"},
    "data": {"name": "synthetic", "batch_size": 64, "eval_batch_size": 128},
    "threat": {"eps": 0.1},
    "attack": {"step_size": 0.05, "steps": 2},
    "transfer": {"name": "full_finetune", "init": "ranli"},
    "train": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 0.5},
    "stage1": {"epochs": 1},
    "eval": {"attack": {"steps": 3, "step_size": 0.05}},
    "run": {"threads": 2},
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never touch the network: connect, connect_ex, sendto, create_connection and every DNS look-up fail
    loudly (tests/netguard.py; tests/reliability/test_untrusted.py checks each one)."""
    netguard.install(monkeypatch.setattr)
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg():
    """A Config for 2-epoch runs on the synthetic data; override with tiny_cfg(**{"train": {...}})."""

    def make(overrides: list[str] = ()):
        return load_config(data=TINY, overrides=list(overrides))

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for one test module, restored afterwards.

    On a 2-core machine that is busy with another job, torch's intra-op threads spin-wait on each other and tiny
    models run ~30x slower; one thread keeps the small attack/backbone/data tests fast and their results stable.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- fast pipeline runs (tests/transfer, tests/training, tests/evaluation, tests/cli) --------------------------

# One torch thread (see `one_thread`) and small splits: a 2-epoch run takes about a second on a busy 2-core machine.
FAST = ("run.threads=1", "data.train_limit=64", "data.val_limit=32", "data.test_limit=32", "data.batch_size=32",
        "data.eval_batch_size=32")


@pytest.fixture(scope="session")
def fast_cfg():
    """Like `tiny_cfg`, plus FAST; session-scoped so module/session fixtures can build configs too."""

    def make(overrides: list[str] = ()):
        return load_config(data=TINY, overrides=[*FAST, *overrides])

    return make


@pytest.fixture(scope="session")
def finished_run(fast_cfg, tmp_path_factory):
    """One finished 2-epoch full-finetune run shared by read-only tests: (run_dir, results dict, config)."""
    from pathlib import Path

    from roli.training.pipeline import run

    before = torch.get_num_threads()
    cfg = fast_cfg()
    results = run(cfg, out=tmp_path_factory.mktemp("finished"), name="shared")
    torch.set_num_threads(before)
    return Path(results["run_dir"]), results, cfg


# --- a small adversarially trained model (tests/attacks, tests/evaluation) -------------------------------------


@pytest.fixture(scope="session")
def robust_mlp():
    """An MLP PGD-trained (L-inf eps 0.1, 3 steps, 5 epochs) on 2,000 random shipped MNIST digits of all 10
    classes, about 0.6 s on one thread; plus 100 evenly spaced test digits as (loader of 50, x, y).

    Random digits, not `train_limit`: the shipped MNIST is stored by class, so the first N are only 0s, 1s and 2s.
    """
    from torch.utils.data import Subset

    from roli.config import DataConfig
    from roli.data import build_data, make_loader
    from tiny_models import adversarially_trained_mlp

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    splits = build_data(DataConfig(name="mnist"))
    idx = torch.randperm(len(splits.train.labels), generator=torch.Generator().manual_seed(0))[:2000]
    xs, ys = splits.train.images[idx].float() / 255, splits.train.labels[idx]
    model = adversarially_trained_mlp(xs, ys)
    torch.set_num_threads(before)
    loader = make_loader(Subset(splits.test, range(0, len(splits.test), len(splits.test) // 100)), 50, shuffle=False)
    x_test = torch.cat([x for x, _ in loader])
    y_test = torch.cat([y for _, y in loader])
    return model, loader, x_test, y_test


# --- the attack contract (tests/attacks/test_contract.py); tiny backbones per family: tiny_models.tiny_backbone ---


@pytest.fixture
def bn_net():
    """`tiny_models.SmallNet` (4 classes, 1x12x12 input, BatchNorm and Dropout) with non-trivial BatchNorm running
    statistics, so train vs eval mode changes its output; seeded."""
    from tiny_models import SmallNet

    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture
def small_batch():
    """12 seeded 1x12x12 images in [0,1] (images 0-2 all 0, all 1 and half of each: the box's edges) and labels
    of 4 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 12, 12, generator=g)
    x[0], x[1] = 0.0, 1.0
    x[2, :, :6], x[2, :, 6:] = 0.0, 1.0
    return x, torch.randint(0, 4, (12,), generator=g)
