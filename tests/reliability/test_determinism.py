"""Determinism (docs/reliability.md, guarantee 8): the same seed on the same machine (CPU) gives identical results,
attack random starts included, through every path: every transfer method (RanLI), RoLI's two stages, `roli eval`
(PGD suite and AutoAttack). Each is run twice and compared number for number and tensor for tensor; a different
seed must change the result (so the comparison is not vacuous). Sweeps and resumed runs are compared with
uninterrupted ones in test_kill_resume.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reliability.helpers import assert_same_run, cli, numbers, strip, tensors
from roli.attacks import make_attack
from roli.checkpoints import load_file
from roli.config import dump_config
from roli.files import read_json
from roli.transfer import TRANSFER

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_EPOCH = ["train.epochs=1", "data.train_limit=32", "data.val_limit=16", "data.test_limit=16",
             "threat.eps=0.02", "attack.step_size=0.01", "eval.attack.step_size=0.01"]


def _twice(fast_cfg, tmp_path, capsys, overrides: list[str]) -> tuple:
    """The recipe run twice into two output roots (the CLI's path without its report)."""
    from roli.training.pipeline import run

    cfg = fast_cfg([*ONE_EPOCH, *overrides])
    dump_config(cfg, tmp_path / "d.yaml")
    return tuple(Path(run(cfg, out=tmp_path / out, name="d")["run_dir"]) for out in ("a", "b"))


@pytest.mark.parametrize("method", sorted(TRANSFER.names()))
def test_every_method_twice_is_bit_identical(method, fast_cfg, tmp_path, capsys):
    a, b = _twice(fast_cfg, tmp_path, capsys, [f"transfer.name={method}"])
    assert_same_run(a, b)


def test_roli_twice_is_bit_identical_and_another_seed_differs(fast_cfg, tmp_path, capsys):
    a, b = _twice(fast_cfg, tmp_path, capsys, ["transfer.init=roli"])
    assert_same_run(a, b)
    (s1a,), (s1b,) = a.parent.glob("stage1-*"), b.parent.glob("stage1-*")
    assert_same_run(s1a, s1b)

    recipe = tmp_path / "d.yaml"
    rc, err = cli(["run", recipe, "--out", tmp_path / "c", "--set", "run.seed=1"], capsys)
    assert rc == 0, err
    ta, tc = tensors(load_file(a / "best.pt")), tensors(load_file(tmp_path / "c" / "d" / "best.pt"))
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)  # the seed matters: the comparison above is not vacuous
    assert numbers(tmp_path / "c" / "d")["history"] != numbers(a)["history"] or \
        numbers(tmp_path / "c" / "d")["test"] != numbers(a)["test"]


def test_attack_random_starts_follow_the_seed():
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 4, (8,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 4))
    attack = make_attack("pgd", eps=0.1, steps=1, step_size=0.01, random_start=True)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(attack(model, x, y))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_roli_eval_twice_is_identical(finished_run, tmp_path, capsys):
    run_dir = finished_run[0]
    results = []
    for i in range(2):
        out = tmp_path / f"quick{i}.json"
        rc, err = cli(["eval", "--checkpoint", run_dir / "best.pt", "--suite", "quick", "--limit", "16",
                       "--output", out], capsys)
        assert rc == 0, err
        results.append(read_json(out))
    assert strip(results[0]["results"]) == strip(results[1]["results"])
    assert [c["passed"] for c in results[0]["checks"]] == [c["passed"] for c in results[1]["checks"]]

    aa = ["--attack", "autoattack", "--limit", "16", "--aa", "version=custom", "attacks=[apgd-ce,apgd-t]",
          "n_iter=3", "apgd_restarts=1"]
    flags = []
    for i in range(2):  # fresh state files: nothing is reused, the seed alone makes them agree
        state = tmp_path / f"aa{i}.state.json"
        rc, err = cli(["eval", "--checkpoint", run_dir / "best.pt", *aa, "--aa-state", state,
                       "--output", tmp_path / f"aa{i}.json"], capsys)
        assert rc == 0, err
        flags.append([c["flags"] for c in read_json(state)["chunks"]])
        assert not read_json(tmp_path / f"aa{i}.json")["results"]["autoattack"]["resumed"]
    assert flags[0] == flags[1]


def test_data_order_does_not_depend_on_num_workers():
    """The batches of an epoch depend only on (seed, epoch): data.num_workers is a speed knob (a resume may change
    it). Wrapped in tqdm.auto as the training loop does, which calls iter() once more in its constructor."""
    import multiprocessing

    from tqdm.auto import tqdm

    from roli.config import DataConfig
    from roli.data import build_data, make_loader

    train = build_data(DataConfig(name="synthetic", train_limit=64)).train
    orders = []
    for workers in (0, 2):
        bar = tqdm(make_loader(train, 16, shuffle=True, seed=7, num_workers=workers), disable=None)
        assert not multiprocessing.active_children()  # no worker starts before the loop does
        orders.append([y.tolist() for _, y in bar])
        assert not multiprocessing.active_children()  # and none outlives it
    assert orders[0] == orders[1]
