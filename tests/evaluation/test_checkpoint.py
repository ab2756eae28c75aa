"""evaluate_checkpoint: a best.pt is rebuilt from the config stored inside it and scores as the run did."""

from __future__ import annotations

import pytest
import torch

from roli.checkpoints import load_file
from roli.errors import CheckpointError
from roli.evaluation.checkpoint import evaluate_checkpoint
from roli.transfer.state import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_load_model_rebuilds_the_best_weights(finished_run):
    run_dir, _, cfg = finished_run
    model, loaded_cfg = load_model(str(run_dir / "best.pt"))
    assert loaded_cfg == cfg
    assert not model.training
    best = load_file(run_dir / "best.pt")["model"]
    state = model.state_dict()
    assert state.keys() == best.keys()
    assert all(torch.equal(state[k], best[k]) for k in best)


def test_clean_accuracy_matches_results_json(finished_run):
    run_dir, res, cfg = finished_run
    out = evaluate_checkpoint(str(run_dir / "best.pt"), limit=cfg.data.test_limit)
    clean = out["results"]["clean"]
    assert clean["n"] == res["test"]["n"] == 32
    assert clean["acc"] == res["test"]["clean"]
    assert out["threat"]["eps"] == cfg.threat.eps and out["attack"]["steps"] == cfg.eval.attack.steps
    assert out["data"]["split"] == "test" and out["data"]["name"] == "synthetic"


def test_default_evaluation_uses_the_runs_test_set(finished_run):
    run_dir, res, _ = finished_run
    out = evaluate_checkpoint(str(run_dir / "best.pt"))
    assert out["results"]["clean"]["n"] == res["test"]["n"]
    assert out["results"]["clean"]["acc"] == res["test"]["clean"]


def test_eps_zero_attack_equals_clean(finished_run):
    run_dir, _, cfg = finished_run
    out = evaluate_checkpoint(str(run_dir / "best.pt"), eps=0, steps=5, limit=cfg.data.test_limit)
    r = out["results"]
    assert out["threat"]["eps"] == 0.0 and out["attack"]["steps"] == 5
    assert r["pgd"]["n"] == r["clean"]["n"] == 32
    assert r["pgd"]["acc"] == r["clean"]["acc"]


def test_large_eps_does_not_raise_accuracy(finished_run):
    run_dir, _, _ = finished_run
    out = evaluate_checkpoint(str(run_dir / "best.pt"), eps="1/2", steps=5, step_size="1/10", split="val")
    r = out["results"]
    assert out["threat"]["eps"] == 0.5 and out["data"]["split"] == "val"
    assert r["clean"]["n"] == r["pgd"]["n"] > 0
    assert r["pgd"]["acc"] <= r["clean"]["acc"]


def test_non_roli_file_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a roli checkpoint"):
        evaluate_checkpoint(str(path))


def test_load_model_does_not_need_the_original_backbone_file(tmp_path):
    """best.pt holds every weight: re-evaluating must work after the pretrained backbone file moved away."""
    import dataclasses

    import torch

    from roli.backbones import build_model
    from roli.checkpoints import atomic_save
    from roli.config import Config, to_dict
    from roli.transfer import build_transfer
    from roli.transfer.state import load_model

    cfg = Config()  # a known-checkpoint name, whose file is required for training but not for re-evaluation
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, name="madry_resnet50_linf_4",
                                                                checkpoint=str(tmp_path / "gone.pt")))
    model = build_transfer(cfg.transfer).apply(build_model(cfg.backbone, 4, load_weights=False))
    path = tmp_path / "best.pt"
    atomic_save({"format": "roli", "model": model.state_dict(), "config": to_dict(cfg), "classifier": "head",
                 "num_classes": 4}, path)
    loaded, _ = load_model(str(path))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
