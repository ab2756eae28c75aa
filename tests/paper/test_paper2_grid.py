"""recipes/paper2: the paper's matrix on ARES ConvNeXt-B and Swin-L. Each cell is its Swin-B cell with only the
backbone changed, the grid expands to every cell (VPT excluded on ConvNeXt) and every cell has a cost estimate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from roli.backbones.known import known_checkpoints
from roli.config import load_config, to_dict
from roli.sweep.estimate import architecture, estimate_hours
from roli.sweep.grid import cell_config, expand, load_grid

REPO = Path(__file__).resolve().parents[2]
PAPER2 = REPO / "recipes" / "paper2"
BACKBONES = {"convnext_b": "ares_convnext_base_at", "swin_l": "ares_swin_large_at"}
CELLS = sorted(p.relative_to(PAPER2).as_posix() for b in BACKBONES for p in (PAPER2 / b).glob("*.yaml"))


def test_every_swin_b_cell_has_its_variants():
    swin_b = sorted(p.name for p in (REPO / "recipes" / "paper" / "swin_b").glob("*.yaml"))
    assert len(swin_b) == 50
    assert sorted(c.split("/")[1] for c in CELLS if c.startswith("swin_l/")) == swin_b
    assert sorted(c.split("/")[1] for c in CELLS if c.startswith("convnext_b/")) == [
        n for n in swin_b if not n.startswith("vpt_deep")]


@pytest.mark.parametrize("cell", CELLS)
def test_cell_is_the_swin_b_cell_with_another_backbone(cell):
    backbone, name = cell.split("/")
    cfg = load_config(PAPER2 / cell)
    ref = load_config(REPO / "recipes" / "paper" / "swin_b" / name)
    assert cfg.backbone.name == BACKBONES[backbone] and cfg.backbone.checkpoint == f"checkpoints/{BACKBONES[backbone]}.pth"
    assert cfg.backbone.input_size == 224 and cfg.threat == ref.threat
    same = dataclasses.replace(cfg, backbone=ref.backbone)
    assert to_dict(same) == to_dict(ref)


def test_grid_lists_every_cell_with_an_estimate():
    grid = load_grid(PAPER2 / "grid.yaml")
    cells = expand(grid)
    assert len(cells) == 95  # 2 x 5 datasets x 10 (method, init) pairs, minus ConvNeXt's 5 VPT cells
    assert {c.recipe.relative_to(PAPER2).as_posix() for c in cells} == set(CELLS)
    for c in cells[:: 7]:
        cfg = cell_config(c)
        assert architecture(cfg) == known_checkpoints()[cfg.backbone.name].arch
        assert estimate_hours(cfg, grid.cost) > 0, c.name


def test_backbones_are_robust_at_another_eps_than_the_cells():
    """Both backbones were trained at L-inf 4/255 while the cells fine-tune at 8/255: the mismatch is recorded."""
    for entry in BACKBONES.values():
        k = known_checkpoints()[entry]
        assert k.threat() == {"norm": "linf", "eps": pytest.approx(4 / 255)}
    assert load_config(PAPER2 / CELLS[0]).threat.eps == pytest.approx(8 / 255)
