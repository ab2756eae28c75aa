"""roli.evaluation.interpolate (WiSE-FT curves) and roli.report.curves: the endpoints are the run's start and best.pt,
alpha is chosen on validation robust accuracy, the files are written and never overwritten."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from roli.errors import OutputExists, UsageError
from roli.evaluation.interpolate import (
    DEFAULT_ALPHAS,
    choose_alpha,
    endpoints,
    finished_run,
    interpolate_run,
    mix,
    parse_alphas,
)
from roli.report.curves import curve_folder, write_curve
from roli.training import pipeline
from roli.transfer.state import trained_keys

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(120)]

# PGD without its random start: validation numbers are then a function of the weights alone, so best.pt's recorded
# validation accuracy (measured during training) can be reproduced exactly.
EXACT = ["eval.attack.random_start=false", "train.epochs=1", "stage1.epochs=1"]
LORA = [*EXACT, "backbone.name=vit_tiny_28_fmnist_robust", "transfer.name=lora", "train.lr=0.01"]
LP_FT = [*EXACT, "transfer.name=full_finetune", "transfer.init=lp_ft"]


@pytest.fixture(scope="module")
def runs(fast_cfg, tmp_path_factory):
    """A RanLI LoRA run and an LP-FT full-finetuning run, with the trained state each fit() started from."""
    out = tmp_path_factory.mktemp("interp")
    starts: dict[str, dict] = {}
    real = pipeline.fit

    def spy(model, cfg, splits, run_dir, resume=False):
        keys = set(trained_keys(model))
        starts[Path(run_dir).name] = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}
        return real(model, cfg, splits, run_dir, resume=resume)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "fit", spy)
        res = {name: run for name, over in (("lora", LORA), ("lp_ft", LP_FT))
               for run in [pipeline.run(fast_cfg(over), out=out, name=name)]}
    return out, res, starts


@pytest.fixture(scope="module")
def curves(runs):
    _, res, _ = runs
    return {name: interpolate_run(r["run_dir"], [0, 0.5, 1], device="cpu") for name, r in res.items()}


# --------------------------------------------------------------------------- the arithmetic


def test_mix_is_the_weighted_average_and_exact_at_the_ends():
    start = {"w": torch.tensor([0.0, 2.0, -4.0]), "n": torch.tensor(3)}
    end = {"w": torch.tensor([1.0, 4.0, 4.0]), "n": torch.tensor(7)}
    assert torch.equal(mix(start, end, 0.5)["w"], torch.tensor([0.5, 3.0, 0.0]))
    assert torch.allclose(mix(start, end, 0.25)["w"], 0.75 * start["w"] + 0.25 * end["w"])
    assert torch.equal(mix(start, end, 0)["w"], start["w"]) and torch.equal(mix(start, end, 1)["w"], end["w"])
    assert mix(start, end, 0)["n"] == 3 and mix(start, end, 0.5)["n"] == 7  # integer counters: the end's
    with pytest.raises(ValueError, match="differ in keys"):
        mix(start, {"w": end["w"]}, 0.5)


def test_choose_alpha_maximises_robust_accuracy_and_ties_go_to_the_larger_alpha():
    rows = [{"alpha": 0.0, "val_robust": 10.0}, {"alpha": 0.3, "val_robust": 30.0},
            {"alpha": 0.6, "val_robust": 30.0}, {"alpha": 1.0, "val_robust": 20.0}]
    assert choose_alpha(rows) == 0.6
    assert choose_alpha(rows[:2] + rows[3:]) == 0.3


def test_parse_alphas():
    assert parse_alphas(None) == list(DEFAULT_ALPHAS) and len(DEFAULT_ALPHAS) == 11
    assert parse_alphas("0.5,0.25,0.5") == [0.0, 0.25, 0.5, 1.0]  # sorted, unique, 0 and 1 added
    for bad in ("0,2", "-0.1", "nan", "a,b", ",", "0.5,inf"):
        with pytest.raises(UsageError, match="--alphas"):
            parse_alphas(bad)


# --------------------------------------------------------------------------- a run's curve


@pytest.mark.parametrize("name", ["lora", "lp_ft"])
def test_the_start_is_rebuilt_exactly_as_the_pipeline_built_it(runs, name):
    _, res, starts = runs
    cfg, results = finished_run(res[name]["run_dir"])
    _, _, start, end = endpoints(Path(res[name]["run_dir"]), cfg, results)
    assert start.keys() == starts[name].keys()
    assert all(torch.equal(start[k], starts[name][k]) for k in start)
    assert any(not torch.equal(start[k], end[k]) for k in start)  # training moved something


def test_alpha_1_is_best_pt_and_alpha_0_the_start(runs, curves):
    _, res, _ = runs
    for name, curve in curves.items():
        last = curve["rows"][-1]
        assert (last["val_clean"], last["val_robust"]) == (res[name]["best_val"]["clean"],
                                                           res[name]["best_val"]["robust"])
        assert (last["test_clean"], last["test_robust"]) == (res[name]["test"]["clean"], res[name]["test"]["pgd"])
    # LP-FT's start is stage 1's model plus the untouched backbone: its validation numbers are stage 1's own
    s1 = res["lp_ft"]["stage1"]["val"]
    assert (curves["lp_ft"]["rows"][0]["val_clean"], curves["lp_ft"]["rows"][0]["val_robust"]) == (s1["clean"],
                                                                                                 s1["robust"])
    lora = curves["lora"]["rows"]
    assert (lora[0]["val_clean"], lora[0]["val_robust"]) != (lora[-1]["val_clean"], lora[-1]["val_robust"])


def test_the_chosen_alpha_maximises_validation_robust_accuracy_and_is_tested(curves):
    for curve in curves.values():
        rows = curve["rows"]
        assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
        best = max(r["val_robust"] for r in rows)
        assert curve["chosen_alpha"] == max(r["alpha"] for r in rows if r["val_robust"] == best)
        tested = {r["alpha"] for r in rows if r["test_clean"] is not None}
        assert tested == {0.0, 1.0, curve["chosen_alpha"]}
        assert curve["chosen"]["test_robust"] is not None and curve["interpolated"]["batchnorm_stats"]


def test_curve_files_are_written_and_never_overwritten(runs, curves, tmp_path):
    _, res, _ = runs
    run_dir = Path(res["lora"]["run_dir"])
    folder = curve_folder(run_dir)
    assert folder == run_dir / "interpolate"
    paths = write_curve(folder, curves["lora"])
    assert [p.name for p in paths] == ["curve.csv", "curve.json", "curve.png"]
    rows = list(csv.DictReader(paths[0].open()))
    assert [float(r["alpha"]) for r in rows] == [0.0, 0.5, 1.0]
    assert [float(r["val_robust"]) for r in rows] == [r["val_robust"] for r in curves["lora"]["rows"]]
    assert rows[1]["test_clean"] == "" and float(rows[2]["test_clean"]) == curves["lora"]["rows"][2]["test_clean"]
    assert sum(int(r["chosen"]) for r in rows) == 1
    saved = json.loads(paths[1].read_text())
    assert saved["chosen_alpha"] == curves["lora"]["chosen_alpha"] and saved["seed"] == 0
    assert {"versions", "device", "attack", "threat", "rows"} <= saved.keys()
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curve_folder(run_dir) == run_dir / "interpolate-2"  # a second curve keeps the first
    with pytest.raises(OutputExists, match="exists"):
        write_curve(folder, curves["lora"])
    with pytest.raises(OutputExists, match="not empty"):
        curve_folder(run_dir, out=folder)


def test_refusals(runs, tmp_path):
    _, res, _ = runs
    with pytest.raises(UsageError, match="not a roli run folder"):
        interpolate_run(tmp_path / "nothing")
    with pytest.raises(UsageError, match="never|without the test split"):
        interpolate_run(res["lora"]["run_dir"], split="test")
    with pytest.raises(UsageError, match="--alphas"):
        interpolate_run(res["lora"]["run_dir"], alphas=[0.5, 1.5])
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    src = Path(res["lora"]["run_dir"])
    (unfinished / "config.yaml").write_text((src / "config.yaml").read_text())
    (unfinished / "results.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(UsageError, match="has not completed.*--resume"):
        interpolate_run(unfinished)
