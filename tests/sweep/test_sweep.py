"""roli.sweep and `roli sweep`: grid expansion, deterministic shards, skip / resume / fail, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from roli.cli.main import main
from roli.config import ConfigError
from roli.sweep.cells import cell_status
from roli.sweep.grid import expand, load_grid
from roli.sweep.run import describe, plan, run_sweep

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
    assert json.loads((out / "sweep-grid-shard1of1.json").read_text())["ran"] == [c.name for c in cells]

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


# --------------------------------------------------------------------------- measured step costs (benchmarks/run.py)

def _bench(tmp_path, name: str, device: str, device_name: str, **entry) -> Path:
    """A hand-written benchmark result: one PGD-2 step of vit_tiny_28 at 28 px, with its parts."""
    row = {"arch": "vit_tiny_28", "transfer": "full_finetune", "resolution": 28, "batch": 128, "precision": "fp32",
           "attack_steps": 2, "select": "best", "seconds_per_image": 0.0044, "attack_pass_seconds_per_image": 0.001,
           "train_pass_seconds_per_image": 0.002, "forward_seconds_per_image": 0.0004, "device": device,
           "device_name": device_name, "date": "2026-12-01", **entry}
    path = tmp_path / name
    path.write_text(json.dumps({"format": "roli-benchmark/1", "machine": {"device_name": device_name},
                                "step_costs": [row]}))
    return path


def _with_cost(grid: Path, cost: dict) -> Path:
    data = yaml.safe_load(grid.read_text())
    grid.write_text(yaml.safe_dump({**data, "cost": cost}, sort_keys=False))
    return grid


def test_dry_run_uses_a_gpu_measurement(grid, tmp_path, capsys):
    _bench(tmp_path, "bench.json", "cuda", "NVIDIA H100 80GB HBM3")
    p = plan(_with_cost(grid, {"measured": "bench.json"}))  # relative to the grid file
    # full_finetune-ranli: 1 epoch; 64 train images x PGD-2 step, 32 val + 32 test images x (PGD-3 + clean).
    # overhead = 0.0044 / (2 x 0.001 + 0.002) = 1.1; train 1.1 x 0.004; eval 1.1 x 3 x 0.001 + 3 x 0.0004.
    train, ev = 1.1 * 0.004, 1.1 * 3 * 0.001 + 3 * 0.0004
    assert p.estimates[1].gpu_hours == pytest.approx((64 * train + 32 * ev + 32 * ev) / 3600)
    assert p.costs[1] == p.estimates[1].gpu_hours
    assert p.estimates[1].gpu_source == "measured on NVIDIA H100 80GB HBM3 on 2026-12-01"
    assert p.estimates[1].cpu_hours is None
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "GPU-hours measured on NVIDIA H100 80GB HBM3 on 2026-12-01 for vit_tiny_28" in text
    assert "assumed for" not in text and "CPU-h" not in text


def test_a_cpu_measurement_gives_cpu_hours_never_gpu_hours(grid, tmp_path, capsys):
    name = "Intel Xeon (AVX512, 2 threads)"
    _bench(tmp_path, "cpu.json", "cpu", name, resolution=56)  # measured at 56 px: scaled by (28/56)^2
    p = plan(_with_cost(grid, {"measured": [str(tmp_path / "cpu.json")]}))
    e = p.estimates[1]
    assert e.gpu_hours is None and e.gpu_source is None  # vit_tiny_28 is not in the assumed table either
    train, ev = 1.1 * 0.004, 1.1 * 3 * 0.001 + 3 * 0.0004
    assert e.cpu_hours == pytest.approx(0.25 * (64 * train + 64 * ev) / 3600)
    assert e.cpu_source == f"measured on {name} on 2026-12-01 (scaled from 56 px)"
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "est. CPU-h" in text and f"CPU-hours measured on {name} on 2026-12-01" in text
    assert "GPU-hours measured" not in text
    assert f"No GPU-hours for vit_tiny_28: no GPU measurement in {tmp_path / 'cpu.json'} and no assumed rate" in text


def test_paper_grid_gpu_hours_stay_assumed_with_a_cpu_measurement(tmp_path):
    bench = _bench(tmp_path, "cpu.json", "cpu", "some CPU", arch="vit_base_patch16_224", resolution=224)
    grid = tmp_path / "grid.yaml"
    data = yaml.safe_load((REPO / "recipes" / "paper" / "grid.yaml").read_text())
    data["recipe"] = str(REPO / "recipes" / "paper" / data["recipe"])
    grid.write_text(yaml.safe_dump({**data, "cost": {**data["cost"], "measured": str(bench)}}))
    assumed = plan(REPO / "recipes" / "paper" / "grid.yaml")
    p = plan(grid)
    assert p.costs == assumed.costs  # GPU-hours unchanged by a CPU timing
    vit = [e for c, e in zip(p.cells, p.estimates) if c.name.startswith("vit_b")]
    assert all(e.gpu_source == "assumed" and e.cpu_hours > 0 for e in vit)
    assert "CPU-hours measured on some CPU on 2026-12-01 for vit_base_patch16_224" in describe(p)


def test_bad_measured_files(grid, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_grid(_with_cost(grid, {"measured": "missing.json"}))
    (tmp_path / "x.json").write_text(json.dumps({"step_costs": []}))
    with pytest.raises(ConfigError, match="not a roli benchmark result"):
        load_grid(_with_cost(grid, {"measured": "x.json"}))
    _bench(tmp_path, "neg.json", "cuda", "gpu", seconds_per_image=-1)
    with pytest.raises(ConfigError, match="seconds_per_image must be a positive number"):
        load_grid(_with_cost(grid, {"measured": "neg.json"}))
    with pytest.raises(ConfigError, match=r"cost: unknown key\(s\) \['measure'\]"):
        load_grid(_with_cost(grid, {"measure": "x.json"}))


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.name)
def test_committed_benchmark_results_load(path):
    from roli.sweep.costs import load_step_costs

    costs = load_step_costs(path)
    assert all(c.seconds_per_image > 0 and c.has_parts and 0.5 < c.overhead < 5 for c in costs)


def test_seeds_are_the_slowest_axis(grid):
    data = yaml.safe_load(grid.read_text())
    grid.write_text(yaml.safe_dump({**data, "seeds": [0, 1]}, sort_keys=False))
    names = [c.name for c in expand(load_grid(grid))]
    assert names == [f"{n}-s{s}" for s in (0, 1) for n in
                     ("linear_probe-ranli", "full_finetune-ranli", "full_finetune-roli", "bitfit-roli")]


def test_seeds_option_keeps_those_cells_and_shards_them(grid):
    data = yaml.safe_load(grid.read_text())
    grid.write_text(yaml.safe_dump({**data, "seeds": [0, 1, 2]}, sort_keys=False))
    p = plan(grid, seeds=[1])
    assert [c.name for c in p.cells] == [f"{n}-s1" for n in
                                         ("linear_probe-ranli", "full_finetune-ranli", "full_finetune-roli",
                                          "bitfit-roli")]
    halves = [{p2.cells[i].name for i in p2.selected()} for p2 in (plan(grid, shard=f"{k}/2", seeds=[1, 2])
                                                                   for k in (1, 2))]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 8  # seeds 1 and 2, each cell once
    with pytest.raises(ConfigError, match=r"no cells with seed 5; the grid's seeds are \[0, 1, 2\]"):
        plan(grid, seeds=[5])


def test_evaluate_runs_after_each_cell_once_and_the_report_reads_it(grid, monkeypatch):
    data = yaml.safe_load(grid.read_text())
    grid.write_text(yaml.safe_dump(sort_keys=False, data={**data, "exclude": data["exclude"] + [{"method": "full_finetune"}],
                                    "evaluate": [{"suite": "full", "limit": 8,
                                                  "aa": {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 2}}]}))
    p = plan(grid)
    assert run_sweep(p)["failed"] == []
    files = sorted(p.out.glob("*/eval-*-test-full.json"))
    assert [f.parent.name for f in files] == ["bitfit-roli-s0", "linear_probe-ranli-s0"]
    for f in files:
        ev = json.loads(f.read_text())
        assert ev["results"]["autoattack"]["n"] == 8 and ev["threat"] == TINY["threat"] | ev["threat"]
    # Again: the files exist, nothing is evaluated twice.
    from roli.evaluation import checkpoint

    monkeypatch.setattr(checkpoint, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated again"))
    assert run_sweep(plan(grid))["failed"] == []


def test_evaluate_only_the_listed_seeds(grid):
    data = yaml.safe_load(grid.read_text())
    grid.write_text(yaml.safe_dump(sort_keys=False, data={
        **data, "seeds": [0, 1], "exclude": data["exclude"] + [{"method": ["full_finetune", "bitfit"]}],
        "evaluate": [{"suite": "quick", "limit": 8, "seeds": [1]}]}))
    p = plan(grid)
    assert run_sweep(p)["failed"] == []
    assert [f.parent.name for f in p.out.glob("*/eval-*.json")] == ["linear_probe-ranli-s1"]


def test_bad_evaluate_entries_are_clear_errors(grid):
    data = yaml.safe_load(grid.read_text())
    for bad, words in [({"suite": "huge"}, "suite must be one of"), ({"suite": "full", "atk": 1}, "keys from"),
                       ({"suite": "quick", "seeds": 0}, "seeds must be a list"),
                       ({"suite": "quick", "split": "dev"}, "split must be")]:
        grid.write_text(yaml.safe_dump({**data, "evaluate": [bad]}))
        with pytest.raises(ConfigError, match=words):
            load_grid(grid)


def test_stop_after_starts_no_new_cell_and_the_next_call_goes_on(grid):
    first = run_sweep(plan(grid), stop_after=0.0)  # the first cell starts (no time has passed), then none
    assert first["ran"] == ["linear_probe-ranli-s0"] and len(first["not_started"]) == 3
    second = run_sweep(plan(grid))
    assert second["complete"] == ["linear_probe-ranli-s0"] and len(second["ran"]) == 3
