"""The pre-registered GPU study (recipes/gpu_study, docs/gpu_study.md) is the design its document says it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from roli.sweep.grid import cell_config, expand, load_grid

GRID = Path(__file__).resolve().parents[2] / "recipes" / "gpu_study" / "grid.yaml"


@pytest.fixture(scope="module")
def cells():
    return {c.name: cell_config(c) for c in expand(load_grid(GRID))}


def test_design_cells_and_seeds(cells):
    assert len(cells) == 35  # (linear probe + 2 methods x 3 inits) x 5 seeds
    for seed in range(5):
        for name in ("linear_probe-ranli", "full_finetune-ranli", "full_finetune-roli", "full_finetune-ranli_matched",
                     "lora-ranli", "lora-roli", "lora-ranli_matched"):
            cfg = cells[f"{name}-s{seed}"]
            assert cfg.run.seed == seed and cfg.backbone.name == "ares_vit_base_at" and cfg.data.name == "cifar10"
            assert cfg.threat.eps == pytest.approx(8 / 255) and cfg.backbone.input_size == 224
            assert cfg.attack.steps == 7 and cfg.eval.attack.steps == 10
            assert cfg.train.precision == "bf16" and cfg.eval.precision == "fp32"


@pytest.mark.parametrize("method", ["full_finetune", "lora"])
def test_matched_control_gets_roli_compute_and_schedule_shape(cells, method):
    roli, ranli, matched = (cells[f"{method}-{init}-s0"] for init in ("roli", "ranli", "ranli_matched"))
    assert roli.transfer.init == "roli" and ranli.transfer.init == matched.transfer.init == "ranli"
    assert matched.train.epochs == roli.stage1.epochs + roli.train.epochs == 2 * ranli.train.epochs
    assert matched.train.warmup_epochs / matched.train.epochs == ranli.train.warmup_epochs / ranli.train.epochs
    # nothing else differs from the 20-epoch RanLI cell
    assert matched.train.lr == ranli.train.lr and matched.transfer == ranli.transfer
    assert matched.attack == ranli.attack and matched.data == ranli.data


def test_autoattack_on_a_fixed_subset():
    grid = load_grid(GRID)
    [aa] = [e for e in grid.evaluate if e["suite"] == "full"]
    assert aa["limit"] == 1000 and aa["aa"]["version"] == "standard" and "seeds" not in aa  # every seed
