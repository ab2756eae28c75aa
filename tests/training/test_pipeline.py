"""pipeline.run(): run folders are never overwritten; RoLI stage 1 -> stage 2 head hand-over and stage-1 caching."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from roli.checkpoints import load_file
from roli.config import load_config
from roli.training import pipeline
from roli.training.pipeline import run, stage1_config, stage1_key
from roli.training.rundir import new_run_dir

# 2-epoch runs on the synthetic data, ~1.5 s at most on a busy 2-core machine
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(120)]

# Stage-1 training settings, written out in full; an LP RanLI run with `train` equal to these is a stage-1 run.
S1 = {"epochs": 1, "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0, "warmup_epochs": 0.0}
ROLI = [f"stage1.{k}={v}" for k, v in S1.items()] + ["transfer.name=full_finetune", "transfer.init=roli"]
LP_AS_STAGE1 = [f"train.{k}={v}" for k, v in S1.items()] + ["transfer.name=linear_probe", "transfer.init=ranli"]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- run folders


def test_same_name_never_overwrites(finished_run, fast_cfg, tmp_path):
    src, res, _ = finished_run
    out = tmp_path / "out"
    shutil.copytree(src, out / "shared")
    before = _snapshot(out / "shared")
    second = run(fast_cfg(["train.epochs=1"]), out=out, name="shared")
    assert Path(second["run_dir"]) == out / "shared-2"
    assert second["status"] == "complete" and len(second["history"]) == 1
    assert _snapshot(out / "shared") == before  # the first run's files are untouched, byte for byte
    assert json.loads((out / "shared" / "results.json").read_text())["history"] == res["history"]
    assert sorted(p.name for p in out.iterdir()) == ["shared", "shared-2"]


def test_new_run_dir_adds_the_next_free_suffix(tmp_path):
    assert new_run_dir(tmp_path, "x") == tmp_path / "x"
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert new_run_dir(tmp_path, "x") == tmp_path / "x-2"
    assert new_run_dir(tmp_path, "x") == tmp_path / "x-3"
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert all(not list((tmp_path / d).iterdir()) for d in ("x-2", "x-3"))


def test_default_run_name_is_method_and_init(fast_cfg, tmp_path, monkeypatch):
    # Only the folder name matters here: stop right after the folder is created.
    def stop(cfg, run_dir, *args):
        raise RuntimeError(f"stop {run_dir.name}")

    monkeypatch.setattr(pipeline, "_train_and_test", stop)
    with pytest.raises(RuntimeError, match="stop full_finetune-ranli"):
        run(fast_cfg(), out=tmp_path)
    assert not (tmp_path / "full_finetune-ranli").exists()  # failed before training: the half-made folder is removed
    with pytest.raises(RuntimeError, match="stop named"):
        run(fast_cfg(["run.name=named"]), out=tmp_path)


# --------------------------------------------------------------------------- RoLI


@pytest.fixture
def fit_spy(monkeypatch):
    """Wrap pipeline.fit: record each call's method and the head it starts training from, then train."""
    calls = []
    real_fit = pipeline.fit

    def spy(model, cfg, splits, run_dir, resume=False):
        calls.append({"method": cfg.transfer.name, "init": cfg.transfer.init, "run_dir": Path(run_dir),
                      "head": {k: v.detach().clone() for k, v in model.head.state_dict().items()}})
        return real_fit(model, cfg, splits, run_dir, resume=resume)

    monkeypatch.setattr(pipeline, "fit", spy)
    return calls


def _best_head(run_dir: Path) -> dict[str, torch.Tensor]:
    best = load_file(run_dir / "best.pt")
    return {k[len("net.head."):]: v for k, v in best["model"].items() if k.startswith("net.head.")}


def _stage1_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("stage1-"))


def test_roli_stage2_starts_from_the_stage1_head_and_stage1_is_reused(fast_cfg, tmp_path, fit_spy):
    cfg = fast_cfg(ROLI)
    res = run(cfg, out=tmp_path, name="roli")

    # two fits: stage-1 linear probing, then stage 2
    assert [(c["method"], c["init"]) for c in fit_spy] == [("linear_probe", "ranli"), ("full_finetune", "roli")]
    s1_dir = fit_spy[0]["run_dir"]
    assert _stage1_dirs(tmp_path) == [s1_dir.name]
    assert fit_spy[1]["run_dir"] == tmp_path / "roli" == Path(res["run_dir"])

    # stage 2 starts exactly from the stage-1 best head
    s1_head = _best_head(s1_dir)
    assert fit_spy[1]["head"].keys() == s1_head.keys() == {"weight", "bias"}
    for k in s1_head:
        assert torch.equal(fit_spy[1]["head"][k], s1_head[k]), k
    assert not torch.equal(fit_spy[0]["head"]["weight"], s1_head["weight"])  # stage 1 did train the head

    # provenance
    s1_res = json.loads((s1_dir / "results.json").read_text())
    assert s1_res["status"] == "complete" and s1_res["method"] == "linear_probe"
    assert s1_res["params"]["trainable"] == 128 * 4 + 4  # head only
    assert len(s1_res["history"]) == S1["epochs"]
    st = res["stage1"]
    assert Path(st["run_dir"]) == s1_dir and Path(st["checkpoint"]) == s1_dir / "best.pt"
    assert st["selected_epoch"] == s1_res["selected_epoch"]
    assert st["val"] == s1_res["best_val"] and st["test"] == s1_res["test"]
    assert st["key"] == s1_res["stage1_key"] == stage1_key(stage1_config(cfg))
    assert res["init"] == "roli" and res["stage1_key"] is None
    assert json.loads((tmp_path / "roli" / "results.json").read_text())["stage1"] == st

    # a second RoLI run into the same output root reuses stage 1: no new folder, no stage-1 training
    fit_spy.clear()
    s1_before = _snapshot(s1_dir)
    res2 = run(fast_cfg([*ROLI, "train.epochs=1"]), out=tmp_path, name="roli")
    assert [c["method"] for c in fit_spy] == ["full_finetune"]
    assert _stage1_dirs(tmp_path) == [s1_dir.name]
    assert _snapshot(s1_dir) == s1_before
    assert Path(res2["run_dir"]) == tmp_path / "roli-2"
    assert res2["stage1"] == st
    for k in s1_head:
        assert torch.equal(fit_spy[0]["head"][k], s1_head[k])


def test_finished_linear_probe_run_is_reused_as_stage1(fast_cfg, tmp_path, fit_spy):
    lp_cfg, roli_cfg = fast_cfg(LP_AS_STAGE1), fast_cfg(ROLI)
    assert stage1_key(lp_cfg) == stage1_key(stage1_config(roli_cfg)) is not None
    lp = run(lp_cfg, out=tmp_path, name="my-linear-probe")
    assert lp["stage1_key"] == stage1_key(lp_cfg)
    fit_spy.clear()

    res = run(roli_cfg, out=tmp_path, name="roli")
    assert [c["method"] for c in fit_spy] == ["full_finetune"]  # no stage-1 training
    assert _stage1_dirs(tmp_path) == []
    assert Path(res["stage1"]["run_dir"]) == tmp_path / "my-linear-probe"
    assert res["stage1"]["selected_epoch"] == lp["selected_epoch"]
    assert res["stage1"]["val"] == lp["best_val"]
    lp_head = _best_head(tmp_path / "my-linear-probe")
    for k in lp_head:
        assert torch.equal(fit_spy[0]["head"][k], lp_head[k])


def test_stage1_key_depends_on_exactly_the_stage1_settings(fast_cfg):
    lp = fast_cfg(LP_AS_STAGE1)
    key = stage1_key(lp)
    assert stage1_key(fast_cfg(LP_AS_STAGE1)) == key  # deterministic
    assert stage1_key(fast_cfg([*LP_AS_STAGE1, "train.lr=0.06"])) != key
    assert stage1_key(fast_cfg([*LP_AS_STAGE1, "threat.eps=0.2"])) != key
    assert stage1_key(fast_cfg([*LP_AS_STAGE1, "run.seed=1"])) != key
    assert stage1_key(fast_cfg([*LP_AS_STAGE1, "transfer.head_init=paper"])) != key
    assert stage1_key(fast_cfg([*LP_AS_STAGE1, "stage1.lr=0.3"])) == key  # an LP run's own stage1 is irrelevant
    assert stage1_key(fast_cfg(["transfer.name=full_finetune"])) is None  # only linear-probe RanLI runs
    assert stage1_key(fast_cfg(["transfer.name=linear_probe", "transfer.init=roli"])) is None
    s1 = stage1_config(fast_cfg(ROLI))
    assert s1.transfer.name == "linear_probe" and s1.transfer.init == "ranli" and s1.train == s1.stage1


def test_stage1_key_follows_the_backbone_files_content(fast_cfg, tmp_path):
    """Replacing the weights file at the same path must not reuse a stale stage-1 head."""
    path = tmp_path / "backbone.pt"
    torch.manual_seed(0)
    torch.save(VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=8, depth=1, num_heads=2).state_dict(),
               path)
    cfg = fast_cfg([*LP_AS_STAGE1, f"backbone.checkpoint={path}"])
    key = stage1_key(cfg)
    assert stage1_key(cfg) == key
    torch.manual_seed(1)  # same path, same size, other weights
    torch.save(VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=8, depth=1, num_heads=2).state_dict(),
               path)
    os.utime(path, ns=(1, 1))  # even with a faked modification time the content decides (size+mtime cache key)
    assert stage1_key(cfg) != key


def test_the_paper_head_is_used_in_stage1_and_ranli(fast_cfg):
    assert stage1_config(fast_cfg([*ROLI, "transfer.head_init=paper"])).transfer.head_init == "paper"


def test_deterministic_runs_do_not_leak_into_later_runs(fast_cfg, tmp_path):
    res = run(fast_cfg(["run.deterministic=true", "train.epochs=1"]), out=tmp_path, name="det")
    assert res["status"] == "complete" and res["device"].startswith("cpu (")
    assert not torch.are_deterministic_algorithms_enabled()


def test_partial_stage1_section_keeps_the_stage1_defaults():
    default = load_config(data={}).stage1
    partial = load_config(data={}, overrides=["stage1.epochs=2"]).stage1
    assert partial.epochs == 2
    assert (partial.optimizer, partial.lr, partial.weight_decay, partial.warmup_epochs) == \
        (default.optimizer, default.lr, default.weight_decay, default.warmup_epochs)


def test_per_example_test_predictions_are_saved_and_agree_with_the_numbers(finished_run):
    """test_predictions.npz (label, clean prediction, robust verdict per test image, in the split's order) gives back
    exactly the run's test accuracies: paired analyses over test images can start from it."""
    from roli.training.rundir import read_predictions

    run_dir, res, _ = finished_run
    assert res["test"]["predictions"] == "test_predictions.npz"
    p = read_predictions(run_dir / "test_predictions.npz")
    assert len(p["label"]) == len(p["robust"]) == res["test"]["n"]
    assert 100 * (p["clean_pred"] == p["label"]).mean() == pytest.approx(res["test"]["clean"])
    assert 100 * p["robust"].mean() == pytest.approx(res["test"]["pgd"])
    assert not (p["robust"] & (p["clean_pred"] != p["label"])).any()  # robust implies clean-correct
    assert (run_dir / "test_predictions.npz").stat().st_size < 4096
