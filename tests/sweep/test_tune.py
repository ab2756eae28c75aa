"""roli tune: the learning rate chosen by successive halving on validation robust accuracy, resumable."""

from __future__ import annotations

import json

import pytest

from roli.cli.main import main
from roli.config import ConfigError, dump_config, load_config
from roli.sweep import tune as tune_mod
from roli.sweep.tune import parse_lrs, tune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recipe(fast_cfg, tmp_path):
    path = tmp_path / "r.yaml"
    dump_config(fast_cfg(["transfer.name=linear_probe", "train.warmup_epochs=0"]), path)
    return path


def test_successive_halving_picks_the_best_validation_robust_lr_and_writes_a_recipe(recipe, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", str(recipe), "--lr", "1e-5,1e-3,3e-2", "--out", str(out)]) == 0
    result = json.loads((out / "r.tune.json").read_text())
    first, second = result["rounds"]
    assert [s["epochs"] for s in first] == [1, 1, 1] and [s["epochs"] for s in second] == [2, 2]
    ranked = sorted(first, key=lambda s: (-s["val_robust"], -s["val_clean"], s["lr"]))
    assert {s["lr"] for s in second} == {ranked[0]["lr"], ranked[1]["lr"]}  # the better half (of 3: 2) goes on
    final = sorted(second, key=lambda s: (-s["val_robust"], -s["val_clean"], s["lr"]))
    assert result["chosen"]["lr"] == final[0]["lr"]  # two left: compared once, no lone survivor trained on
    for s in first + second:  # what selection sees: validation numbers only, never test
        assert set(s) == {"lr", "epochs", "val_robust", "val_clean", "selected_epoch", "run_dir"}
    tuned = load_config(result["tuned_recipe"])
    assert tuned.train.lr == result["chosen"]["lr"] and tuned.train.epochs == load_config(recipe).train.epochs
    assert "Chosen: lr" in (out / "r.tune.md").read_text() and "chosen lr" in capsys.readouterr().out
    edge = {1e-5: "smallest", 3e-2: "largest"}.get(result["chosen"]["lr"])
    assert result["edge"] == edge and ("the best may lie beyond" in (out / "r.tune.md").read_text()) == bool(edge)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        f"r-lr{lr:g}-e{e}" for lr, e in [(1e-5, 1), (1e-3, 1), (3e-2, 1), *[(s["lr"], 2) for s in second]])


def test_a_rerun_reuses_finished_trials(recipe, tmp_path, monkeypatch):
    out = tmp_path / "tune"
    tune(recipe, [1e-4, 1e-2], out)
    from roli.training import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: calls.append(a) or pytest.fail("trained again"))
    again = tune(recipe, [1e-4, 1e-2], out)
    assert calls == [] and again["chosen"]["lr"] in (1e-4, 1e-2)
    assert tune_mod.read_json(out / "r.tune.json")["chosen"] == again["chosen"]


def test_the_record_folder_gets_a_tuned_recipe_with_a_relative_base(recipe, tmp_path):
    record = tmp_path / "committed" / "tuned"
    result = tune(recipe, [1e-4, 1e-2], tmp_path / "trials", record=record)
    text = (record / "r.tuned.yaml").read_text()
    assert "base: ../../r.yaml" in text and (record / "r.tune.md").is_file() and (record / "r.tune.json").is_file()
    assert load_config(record / "r.tuned.yaml").train.lr == result["chosen"]["lr"]
    assert not (tmp_path / "trials" / "r.tuned.yaml").exists()


def test_grid_edge():
    assert [tune_mod.grid_edge(v, [1e-3, 1e-2, 3e-3]) for v in (1e-2, 1e-3, 3e-3)] == ["largest", "smallest", None]
    assert tune_mod.grid_edge(1e-3, [1e-3]) is None


@pytest.mark.parametrize("text", ["", "a,b", "1e-3,1e-3", "0,1e-3", "-1"])
def test_bad_lr_lists_are_clear_errors(text):
    with pytest.raises(ConfigError, match="--lr"):
        parse_lrs(text)


def test_rates_that_name_one_trial_folder_are_refused():
    """0.001 and 0.0010000001 would share the folder lr0.001, and the second would silently repeat the first."""
    with pytest.raises(ConfigError, match="both name the trial folder lr0.001"):
        parse_lrs("0.001,0.0010000001")


def test_a_trial_folder_of_another_rate_is_not_reused(recipe, tmp_path):
    out = tmp_path / "tune"
    tune(recipe, [1e-4, 1e-2], out)
    with pytest.raises(ConfigError, match=r"holds a trial at lr 0.0001, not 0.00010000001"):
        tune(recipe, [1.0000001e-4, 1e-2], out)


def test_the_tuned_recipe_keeps_the_exact_rate(recipe, tmp_path):
    result = tune(recipe, [1.25e-4, 3.0000001e-3], tmp_path / "tune")
    assert load_config(tmp_path / "tune" / "r.tuned.yaml").train.lr == result["chosen"]["lr"]  # not rounded by :g
