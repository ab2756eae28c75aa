"""roli.training.sweep and `roli sweep`: grid expansion, deterministic shards, skip / resume / fail, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from roli.cli.main import main
from roli.config import ConfigError
from roli.training.sweep import cell_status, describe, expand, load_grid, plan, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]

# Stage 1 written out in full, and the linear-probe cell's `train` equal to it, so RoLI cells reuse that cell.
S1 = {"epochs": 1, "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0, "warmup_epochs": 0.0}


@pytest.fixture
def grid(tmp_path) -> Path:
    """A tiny grid: methods x inits x seeds over recipes written next to it."""
    base = {**TINY, "stage1": S1, "train": {"epochs": 1, "lr": 1e-3, "warmup_epochs": 0.0}}
    base["data"] = {**TINY["data"], "train_limit": 64, "val_limit": 32, "test_limit": 32, "batch_size": 32,
                    "eval_batch_size": 32}
    base["run"] = {"threads": 1}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    recipes = {
        "linear_probe_ranli": {"transfer": {"name": "linear_probe", "init": "ranli"}, "train": S1},
        "full_finetune_ranli": {"transfer": {"name": "full_finetune", "init": "ranli"}},
        "full_finetune_roli": {"transfer": {"name": "full_finetune", "init": "roli"}},
        "bitfit_roli": {"transfer": {"name": "bitfit", "init": "roli"}},
    }
    for name, body in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"base": "base.yaml", **body}))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(sort_keys=False, data={
        "recipe": "{method}_{init}.yaml",
        "axes": {"method": ["linear_probe", "full_finetune", "bitfit"], "init": ["ranli", "roli"]},
        "seeds": [0],
        "exclude": [{"method": "linear_probe", "init": "roli"}, {"method": "bitfit", "init": "ranli"}],
        "out": str(tmp_path / "runs"),
    }))
    return path


def test_expand_names_overrides_and_excludes(grid):
    cells = expand(load_grid(grid))
    assert [c.name for c in cells] == ["linear_probe-ranli-s0", "full_finetune-ranli-s0", "full_finetune-roli-s0",
                                       "bitfit-roli-s0"]
    assert cells[2].overrides[-2:] == ("run.seed=0", "run.name=full_finetune-roli-s0")
    assert cells[0].recipe == grid.parent / "linear_probe_ranli.yaml"


def test_grid_errors(grid, tmp_path):
    data = yaml.safe_load(grid.read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "methods": ["x"]}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['methods'\]"):
        load_grid(bad)
    bad.write_text(yaml.safe_dump({**data, "exclude": []}))  # linear_probe_roli.yaml does not exist
    with pytest.raises(ConfigError, match="linear_probe_roli.yaml"):
        expand(load_grid(bad))
    with pytest.raises(ConfigError, match="i/n"):
        plan(grid, shard="2")
    with pytest.raises(ConfigError, match="1 <= i <= n"):
        plan(grid, shard="0/2")


def test_shards_partition_the_grid_and_keep_stage1_groups_together(grid):
    full = plan(grid, shard="1/1")
    for n in (2, 3, 5):
        chosen = [plan(grid, shard=f"{i}/{n}").selected() for i in range(1, n + 1)]
        assert sorted(i for c in chosen for i in c) == list(range(len(full.cells)))  # each cell in exactly one shard
        assert chosen == [plan(grid, shard=f"{i}/{n}").selected() for i in range(1, n + 1)]  # deterministic
        # the linear-probe RanLI cell and the RoLI cells that reuse it as stage 1 are in the same shard
        together = {0, 2, 3}
        assert any(together <= set(c) for c in chosen)


def test_sweep_runs_skips_resumes_and_reports(grid, capsys):
    assert main(["sweep", str(grid)]) == 0
    out = Path(load_grid(grid).out)
    cells = expand(load_grid(grid))
    assert all(cell_status(out, c) == "complete" for c in cells)
    linear = out / "linear_probe-ranli-s0"
    for roli_cell in ("full_finetune-roli-s0", "bitfit-roli-s0"):  # stage 1 = the grid's linear-probe cell
        res = json.loads((out / roli_cell / "results.json").read_text())
        assert res["stage1"]["run_dir"] == str(linear)
    assert not list(out.glob("stage1-*"))
    assert (out / "report.md").is_file() and "full_finetune" in (out / "report.md").read_text()
    assert json.loads((out / "sweep-shard1of1.json").read_text())["ran"] == [c.name for c in cells]

    # Run again: everything is skipped, nothing is rewritten.
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    assert main(["sweep", str(grid)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == before
    assert "0 ran, 4 already complete" in capsys.readouterr().out

    # An interrupted cell (results.json not complete, checkpoint present) is resumed, not restarted elsewhere.
    res_path = out / "full_finetune-ranli-s0" / "results.json"
    res_path.write_text(json.dumps({**json.loads(res_path.read_text()), "status": "running"}))
    outcome = run_sweep(plan(grid))
    assert outcome["ran"] == ["full_finetune-ranli-s0"]
    assert json.loads(res_path.read_text())["status"] == "complete"
    assert not (out / "full_finetune-ranli-s0-2").exists()


def test_changed_recipe_blocks_a_resume(grid):
    p = plan(grid)
    run_sweep(p)
    out = p.out
    res_path = out / "full_finetune-ranli-s0" / "results.json"
    res_path.write_text(json.dumps({**json.loads(res_path.read_text()), "status": "running"}))
    outcome = run_sweep(plan(grid, overrides=["train.lr=0.5"]))
    assert len(outcome["failed"]) == 1 and "recipe changed since this cell started" in outcome["failed"][0]
    assert "train.lr" in outcome["failed"][0]


def test_a_failing_cell_does_not_stop_the_sweep(grid, capsys):
    recipe = grid.parent / "full_finetune_ranli.yaml"
    recipe.write_text(recipe.read_text() + "backbone: {name: vit_tiny_28, checkpoint: /nonexistent/weights.pth}\n")
    assert main(["sweep", str(grid)]) == 1
    err = capsys.readouterr().err
    assert "failed: full_finetune-ranli-s0: CheckpointError" in err
    out = Path(load_grid(grid).out)
    assert cell_status(out, expand(load_grid(grid))[2]) == "complete"  # later cells still ran


def test_dry_run_runs_nothing(grid, capsys):
    assert main(["sweep", str(grid), "--dry-run", "--shard", "1/2"]) == 0
    text = capsys.readouterr().out
    assert "4 cells" in text and "todo" in text and "shard 1/2" in text
    assert not Path(load_grid(grid).out).exists()


def test_paper_grid_dry_run(capsys):
    assert main(["sweep", str(REPO / "recipes" / "paper" / "grid.yaml"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "100 cells" in text  # 2 backbones x 5 datasets x 10 cells (6 methods x 2 inits - LP RoLI - VPT RoLI)
    assert "swin_b-cifar10-lora-roli-s0" in text and "vit_b-cub200-vpt_deep-ranli-s0" in text
    assert "swin_b-cifar10-vpt_deep-ranli-s0" in text and "vpt_deep-roli" not in text  # Swin VPT runs; no RoLI-VPT
    assert "GPU-hours" in text and "assumed" in text
    p = plan(REPO / "recipes" / "paper" / "grid.yaml")
    assert all(h is not None and h > 0 for h in p.costs)
    assert describe(p).count("\n") == len(p.cells) + 3
