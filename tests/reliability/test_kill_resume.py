"""Kill at any moment, resume to the same result (docs/reliability.md, guarantee 1).

roli runs in a subprocess that SIGKILLs itself at the N-th call of one function (killer.py): mid-epoch (an
optimiser step), during validation, during a checkpoint write (temp file complete, not yet renamed), during RoLI
stage 1 and stage 2, during test evaluation, between and inside sweep cells, and inside AutoAttack. The run is
then resumed the way a user would, and must end bit-identical (CPU, same seed) to an uninterrupted run: every number
in results.json (but wall-clock times) and every tensor of best.pt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from reliability.helpers import (
    assert_same_run,
    assert_same_weights,
    cli,
    killed,
    numbers,
    reference_run,
    snapshot,
    strip,
    temp_files,
    write_recipe,
)
from roli.checkpoints import load_file
from roli.config import dump_config
from roli.files import read_json

pytestmark = pytest.mark.usefixtures("one_thread")

# The shipped robust tiny ViT fine-tuned at a small eps, 3 epochs x 3 optimiser steps; `select: last` writes best.pt
# every epoch (the kill points below count on it); validation and test in 2 batches of 16 (AutoAttack: 2 chunks).
ROBUST = ["backbone.name=vit_tiny_28_fmnist_robust", "threat.eps=0.02", "attack.step_size=0.01",
          "eval.attack.step_size=0.01"]
KILL = ["train.epochs=3", "data.train_limit=96", "data.eval_batch_size=16", "eval.select=last", *ROBUST]


@pytest.fixture(scope="module")
def recipe(fast_cfg, tmp_path_factory) -> Path:
    return write_recipe(fast_cfg(KILL), tmp_path_factory.mktemp("recipe"), "kill.yaml")


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """The uninterrupted run (same recipe, same seed), through the same CLI."""
    return reference_run(recipe, tmp_path_factory.mktemp("reference"))


# One run killed five times, each kill in a new process that resumed the previous one (`roli run --resume`), then
# resumed to the end in-process: (where, target, N-th call in that process, --match, checkpoint.pt epoch after it).
KILLS = [
    ("mid-epoch, before the first checkpoint", "torch.optim.adamw:AdamW.step", 2, None, None),  # epoch 1, step 2
    ("during validation", "roli.training.trainer:evaluate", 2, None, 1),  # epoch 2's validation
    ("during the checkpoint.pt write", "roli.files:replace_into", 1, r"/checkpoint\.pt$", 1),  # epoch 2's rename
    ("during the best.pt write", "roli.files:replace_into", 2, r"/best\.pt$", 2),  # epoch 3's best.pt rename
    ("during test evaluation", "roli.training.pipeline:evaluate", 1, None, 3),
]


def test_sigkill_anywhere_then_resume_is_bit_identical(recipe, reference, tmp_path, capsys):
    out = tmp_path / "runs"
    run_dir = out / "kill"
    for i, (where, target, nth, match, epoch_saved) in enumerate(KILLS):
        killed(target, nth, ["run", "--resume", run_dir] if i else ["run", recipe, "--out", out], match)
        assert read_json(run_dir / "results.json")["status"] == "running", where
        if epoch_saved is None:
            assert not (run_dir / "checkpoint.pt").exists(), where
        else:  # the last complete checkpoint is valid: a kill mid-write leaves the previous one
            assert load_file(run_dir / "checkpoint.pt")["epoch"] == epoch_saved, where
        if match:  # killed between the temp file and the rename: the temp file is there, complete
            (tmp,) = temp_files(run_dir)
            assert load_file(tmp)["epoch"] == epoch_saved + 1, where
    rc, err = cli(["run", "--resume", run_dir], capsys)
    assert rc == 0, err
    assert_same_run(reference, run_dir)
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["kill"] and not temp_files(out)  # in place, no litter


# --------------------------------------------------------------------------- RoLI: both stages


@pytest.fixture(scope="module")
def roli_recipe(fast_cfg, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("roli-recipe") / "roli.yaml"
    dump_config(fast_cfg(["train.epochs=2", "data.train_limit=96", "transfer.init=roli", "stage1.epochs=2", *ROBUST]),
                path)
    return path


def test_roli_killed_in_stage_1_and_in_stage_2(roli_recipe, tmp_path, capsys):
    """Stage 1 killed mid-epoch: re-running the recipe resumes it (the stage-1 cache folder). Stage 2 killed
    mid-epoch: `roli run --resume` of the stage-2 folder. Both stages end as in an uninterrupted run."""
    ref = tmp_path / "reference"
    rc, err = cli(["run", roli_recipe, "--out", ref], capsys)
    assert rc == 0, err
    (ref_stage1,) = ref.glob("stage1-*")

    out = tmp_path / "runs"
    killed("torch.optim.sgd:SGD.step", 4, ["run", roli_recipe, "--out", out])  # stage 1 (SGD), epoch 2
    (stage1,) = out.glob("stage1-*")
    assert stage1.name == ref_stage1.name and load_file(stage1 / "checkpoint.pt")["epoch"] == 1
    assert not (out / "roli").exists()

    killed("torch.optim.adamw:AdamW.step", 4, ["run", roli_recipe, "--out", out])  # stage 2 (AdamW), epoch 2
    assert read_json(stage1 / "results.json")["status"] == "complete"
    assert read_json(out / "roli" / "results.json")["status"] == "running"

    rc, err = cli(["run", "--resume", out / "roli"], capsys)
    assert rc == 0, err
    assert_same_run(ref_stage1, stage1)
    assert_same_run(ref / "roli", out / "roli")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(p.name for p in ref.iterdir() if p.is_dir())


# --------------------------------------------------------------------------- sweep


@pytest.fixture
def grid(tmp_path) -> Path:
    """Two cells: a linear probe (SGD, 1 epoch) and a full fine-tune (AdamW, 2 epochs of 3 steps)."""
    base = {**TINY, "train": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 0.0},
            "data": {**TINY["data"], "train_limit": 96, "val_limit": 32, "test_limit": 32, "batch_size": 32,
                     "eval_batch_size": 32}, "run": {"threads": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    for method, train in (("linear_probe", {"epochs": 1, "optimizer": "sgd", "lr": 0.05}), ("full_finetune", {})):
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "train": train,
                                                                 "transfer": {"name": method}}))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"recipe": "{method}.yaml", "axes": {"method": ["linear_probe", "full_finetune"]},
                                    "out": str(tmp_path / "unused")}))
    return path


def test_sweep_killed_between_and_inside_cells(grid, tmp_path, capsys):
    ref = tmp_path / "reference"
    rc, err = cli(["sweep", grid, "--out", ref], capsys)
    assert rc == 0, err

    out = tmp_path / "runs"
    killed("roli.sweep.run:run_cell", 2, ["sweep", grid, "--out", out])  # cell 1 done, cell 2 not started
    assert read_json(out / "linear_probe" / "results.json")["status"] == "complete"
    assert not (out / "full_finetune").exists()
    finished = snapshot(out / "linear_probe")

    killed("torch.optim.adamw:AdamW.step", 4, ["sweep", grid, "--out", out])  # inside cell 2, epoch 2
    assert read_json(out / "full_finetune" / "results.json")["status"] == "running"
    assert snapshot(out / "linear_probe") == finished  # a finished cell is never touched

    rc, err = cli(["sweep", grid, "--out", out], capsys)
    assert rc == 0, err
    assert snapshot(out / "linear_probe") == finished
    for cell in ("linear_probe", "full_finetune"):
        assert_same_run(ref / cell, out / cell)
    status = json.loads((out / "sweep-grid-shard1of1.json").read_text())
    assert status["ran"] == ["full_finetune"] and status["complete"] == ["linear_probe"]


# --------------------------------------------------------------------------- AutoAttack


def test_autoattack_killed_mid_evaluation_resumes_per_point(reference, tmp_path, capsys):
    """2 chunks x 2 sub-attacks; killed as chunk 2's first sub-attack starts: the re-run skips what the state file
    holds and ends with the uninterrupted per-point result."""
    aa = ["--attack", "autoattack", "--limit", "32", "--aa", "version=custom", "attacks=[apgd-ce,apgd-t]", "n_iter=5",
          "apgd_restarts=1"]
    best = reference / "best.pt"
    rc, err = cli(["eval", "--checkpoint", best, *aa, "--aa-state", tmp_path / "ref.state.json",
                   "--output", tmp_path / "ref.json"], capsys)
    assert rc == 0, err

    state = tmp_path / "aa.state.json"
    killed("roli.evaluation.autoattack:_attack_chunk", 3, ["eval", "--checkpoint", best, *aa, "--aa-state", state,
                                                           "--output", tmp_path / "killed.json"])
    saved = read_json(state)
    assert [sorted(c["flags"]) for c in saved["chunks"]] == [["apgd-ce", "apgd-t", "clean"], ["clean"]]
    assert not (tmp_path / "killed.json").exists()

    rc, err = cli(["eval", "--checkpoint", best, *aa, "--aa-state", state, "--output", tmp_path / "resumed.json"],
                  capsys)
    assert rc == 0, err
    ref_res, res = read_json(tmp_path / "ref.json")["results"], read_json(tmp_path / "resumed.json")["results"]
    assert res["autoattack"]["resumed"] and not ref_res["autoattack"]["resumed"]
    assert strip(res) == strip(ref_res)
    per_point = [[c["flags"] for c in read_json(p)["chunks"]] for p in (tmp_path / "ref.state.json", state)]
    assert per_point[0] == per_point[1]
    assert numbers(reference)["test"]["n"] == res["autoattack"]["n"] == 32
    assert_same_weights(best, best)  # the checkpoint itself is untouched by an evaluation
