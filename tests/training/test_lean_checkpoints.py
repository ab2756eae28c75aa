"""Lean checkpoints: best.pt of a run with a frozen backbone stores only what trains plus the backbone file's
identity; `roli eval` / `roli export` rebuild the rest from that file (SHA-256 checked); checkpoint.pt is removed
when a run completes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from roli.backbones import build_model
from roli.backbones.weights import extract_state_dict
from roli.checkpoints import atomic_save, load_file
from roli.cli.main import main
from roli.errors import CheckpointError
from roli.evaluation.checkpoint import evaluate_checkpoint
from roli.files import sha256sum
from roli.training import pipeline
from roli.training.pipeline import run
from roli.training.trainer import model_checkpoint
from roli.transfer import build_transfer
from roli.transfer.heads import head_state
from roli.transfer.state import frozen_keys, load_model, model_payload, trained_keys

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "roli" / "checkpoints" / "vit_tiny_28_fmnist_robust.pt"
# Fashion-MNIST on the robust tiny ViT learns something in 2 epochs (a wrong backbone would change the numbers);
# PGD without a random start is deterministic, so `roli eval` must reproduce results.json exactly.
LEARNS = ["data.name=fashion_mnist", "train.lr=0.01", "eval.attack.random_start=false"]
FILES = ("format", "model", "config", "classifier", "num_classes", "epoch", "val")


def backbone_file(folder: Path) -> Path:
    """A backbone weights FILE (the shipped robust tiny ViT, copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "backbone.pt"
    shutil.copy(SHIPPED, path)
    return path


def lean_overrides(method: str, backbone: Path, *more: str) -> list[str]:
    return [*LEARNS, f"transfer.name={method}", "backbone.name=vit_tiny_28", f"backbone.checkpoint={backbone}", *more]


@pytest.fixture(scope="module")
def runs(fast_cfg, tmp_path_factory):
    """lora and linear_probe runs (lean best.pt), a LoRA run with standalone_best and one with keep_resume_state."""
    root = tmp_path_factory.mktemp("lean")
    bb = backbone_file(root / "weights")
    before = torch.get_num_threads()
    out = {}
    for name, method, more in (("lora", "lora", ()), ("linear_probe", "linear_probe", ()),
                               ("standalone", "lora", ("run.standalone_best=true",)),
                               ("keep", "lora", ("run.keep_resume_state=true",))):
        cfg = fast_cfg(lean_overrides(method, bb, *more))
        res = run(cfg, out=root / "runs", name=name)
        out[name] = (Path(res["run_dir"]), res, cfg)
    torch.set_num_threads(before)
    return bb, out


@pytest.fixture
def private_run(fast_cfg, tmp_path):
    """A linear-probe run whose backbone file this test may move, change or delete."""
    bb = backbone_file(tmp_path / "weights")
    cfg = fast_cfg(lean_overrides("linear_probe", bb, "train.epochs=1"))
    res = run(cfg, out=tmp_path / "runs", name="lp")
    return Path(res["run_dir"]), res, bb


def _eval_numbers(out: dict) -> tuple[float, float]:
    return out["results"]["clean"]["acc"], out["results"]["pgd"]["acc"]


# --------------------------------------------------------------------------- what best.pt holds


@pytest.mark.parametrize("method", ["lora", "linear_probe"])
def test_lean_best_holds_only_what_trains(runs, tmp_path, method):
    bb, all_runs = runs
    run_dir, res, cfg = all_runs[method]
    best = load_file(run_dir / "best.pt")
    assert best["lean"] is True
    assert best["backbone"] == {"file": str(bb.resolve()), "sha256": sha256sum(bb), "source": "config"}
    model, _ = load_model(str(run_dir / "best.pt"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    stored = set(best["model"])
    assert frozen and not stored & frozen  # no frozen backbone tensor
    assert "net.blocks.0.mlp.fc1.weight" not in stored and "net.patch_embed.proj.weight" not in stored
    assert trainable <= stored  # every trained tensor is there, the head included
    assert stored - trainable == {"normalize.mean", "normalize.std"}  # plus the input normalisation, 2 numbers
    assert sum(v.numel() for v in best["model"].values()) == res["params"]["trainable"] + 2

    standalone = tmp_path / "standalone.pt"
    atomic_save(model_checkpoint(model, cfg, {"epoch": 1}, standalone=True), standalone)
    assert set(load_file(standalone)["model"]) == set(model.state_dict())
    limit = 0.2 if method == "lora" else 0.02  # LoRA: ~14% of the tiny ViT; linear probe: ~1%
    assert (run_dir / "best.pt").stat().st_size < limit * standalone.stat().st_size


def test_standalone_best_stores_the_whole_model(runs):
    _, all_runs = runs
    run_dir, _, cfg = all_runs["standalone"]
    assert cfg.run.standalone_best
    best = load_file(run_dir / "best.pt")
    assert "lean" not in best and "backbone" not in best and set(best) == set(FILES)
    model, _ = load_model(str(run_dir / "best.pt"))
    assert best["model"].keys() == model.state_dict().keys()
    assert "net.blocks.0.attn.qkv.base_layer.weight" in best["model"]
    lean = load_file(all_runs["lora"][0] / "best.pt")
    assert (run_dir / "best.pt").stat().st_size > 5 * (all_runs["lora"][0] / "best.pt").stat().st_size
    assert set(lean["model"]) < set(best["model"])


def test_full_finetune_and_random_init_are_standalone(finished_run, tmp_path):
    run_dir, _, _ = finished_run  # full finetuning of a random-init vit_tiny_28
    best = load_file(run_dir / "best.pt")
    assert "lean" not in best
    # linear probing: lean only when the frozen part comes from a file
    random_lp = build_transfer(_lp()).apply(build_model(_bb(None), 4))
    assert "lean" not in model_payload(random_lp) and frozen_keys(random_lp)
    bb = backbone_file(tmp_path)
    file_lp = build_transfer(_lp()).apply(build_model(_bb(str(bb)), 4))
    payload = model_payload(file_lp)
    assert payload["lean"] and set(payload["model"]) == set(trained_keys(file_lp))
    full = build_transfer(_lp("full_finetune")).apply(build_model(_bb(str(bb)), 4))
    assert "lean" not in model_payload(full) and not frozen_keys(full)  # full finetuning trains everything


def _bb(checkpoint):
    from roli.config import BackboneConfig

    return BackboneConfig(name="vit_tiny_28", checkpoint=checkpoint)


def _lp(name="linear_probe"):
    from roli.config import TransferConfig, from_dict

    return from_dict(TransferConfig, {"name": name})


def test_frozen_batchnorm_statistics_are_frozen_state_and_trained_ones_are_stored():
    from roli.config import BackboneConfig

    lp = build_transfer(_lp()).apply(build_model(BackboneConfig(name="test_resnet"), 4))
    stats = [k for k in lp.state_dict() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and set(stats) <= set(frozen_keys(lp))
    ff = build_transfer(_lp("full_finetune")).apply(build_model(BackboneConfig(name="test_resnet"), 4))
    assert set(stats) <= set(trained_keys(ff)) and not frozen_keys(ff)


# --------------------------------------------------------------------------- roli eval / export


@pytest.mark.parametrize("method", ["lora", "linear_probe"])
def test_eval_of_a_lean_best_reproduces_results_json(runs, method):
    _, all_runs = runs
    run_dir, res, _ = all_runs[method]
    clean, pgd = _eval_numbers(evaluate_checkpoint(str(run_dir / "best.pt")))
    assert (clean, pgd) == (res["test"]["clean"], res["test"]["pgd"])
    assert clean > 40 and pgd > 25  # the model learned: a wrong backbone would not give these numbers (4 classes)


def test_moved_backbone_file_is_a_clear_error_and_backbone_option_fixes_it(private_run, tmp_path, capsys):
    run_dir, res, bb = private_run
    moved = tmp_path / "elsewhere" / "weights.pt"
    moved.parent.mkdir()
    bb.rename(moved)
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--output", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("roli eval: error:")
    assert f"built on {bb.resolve()} (sha256 {sha256sum(moved)[:16]}" in err
    assert "no longer exists" in err and "--backbone PATH" in err
    with pytest.raises(CheckpointError, match="no longer exists"):
        load_model(str(run_dir / "best.pt"))

    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--backbone", str(moved),
                 "--output", str(tmp_path / "e.json")]) == 0, capsys.readouterr().err
    out = json.loads((tmp_path / "e.json").read_text())
    assert _eval_numbers(out) == (res["test"]["clean"], res["test"]["pgd"])

    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--backbone", str(tmp_path / "nope.pt")]) == 2
    assert "--backbone" in capsys.readouterr().err


def test_changed_backbone_file_is_a_hash_error(private_run, tmp_path, capsys):
    run_dir, _, bb = private_run
    recorded = sha256sum(bb)
    other = build_model(_bb(None), 10).net.state_dict()  # same architecture, other weights, same path
    torch.save(other, bb)
    with pytest.raises(CheckpointError, match="another file") as e:
        load_model(str(run_dir / "best.pt"))
    assert recorded[:16] in str(e.value) and sha256sum(bb)[:16] in str(e.value)
    # --backbone is checked the same way
    shutil.copy(bb, tmp_path / "copy.pt")
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--backbone", str(tmp_path / "copy.pt")]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "another file" in err
    assert main(["export", str(run_dir), str(tmp_path / "x.pt")]) == 2  # export cannot rebuild it either
    assert not (tmp_path / "x.pt").exists()


def test_export_of_a_lean_run_is_standalone_and_evaluates_without_the_backbone(private_run, tmp_path, capsys):
    run_dir, res, bb = private_run
    target = tmp_path / "exported.pt"
    assert main(["export", str(run_dir), str(target)]) == 0, capsys.readouterr().err
    exported = load_file(target)
    assert set(exported) == set(FILES) and exported["format"] == "roli"  # the format existing loaders read
    rebuilt, _ = load_model(str(run_dir / "best.pt"))
    assert exported["model"].keys() == rebuilt.state_dict().keys()
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in exported["model"].items())
    bb.unlink()
    assert _eval_numbers(evaluate_checkpoint(str(target))) == (res["test"]["clean"], res["test"]["pgd"])
    # the lean best.pt itself now needs --backbone; export says so too
    assert main(["export", str(run_dir), str(tmp_path / "again.pt")]) == 2
    assert "no longer exists" in capsys.readouterr().err


def test_a_lean_best_is_not_silently_reused_as_a_backbone(runs):
    _, all_runs = runs
    path = all_runs["lora"][0] / "best.pt"
    with pytest.raises(CheckpointError, match="lean roli checkpoint.*roli export"):
        extract_state_dict(load_file(path), path)


def test_roli_stage2_takes_the_head_from_a_lean_stage1(fast_cfg, tmp_path, monkeypatch):
    bb = backbone_file(tmp_path / "weights")
    seen = []
    real = pipeline.init_roli

    def spy(model, state, source):
        seen.append((source, {k: v.clone() for k, v in state.items()}))
        return real(model, state, source)

    monkeypatch.setattr(pipeline, "init_roli", spy)
    res = run(fast_cfg(lean_overrides("lora", bb, "transfer.init=roli", "train.epochs=1")), out=tmp_path / "runs",
              name="roli")
    s1_best = Path(res["stage1"]["checkpoint"])
    s1 = load_file(s1_best)
    assert s1["lean"] and set(s1["model"]) == {"normalize.mean", "normalize.std", "net.head.weight", "net.head.bias"}
    (source, state), = seen
    assert source == str(s1_best) and state.keys() == {"weight", "bias"}
    s1_model, _ = load_model(str(s1_best))
    assert all(torch.equal(state[k], v) for k, v in s1_model.head.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in head_state(str(s1_best)).items())
    assert not (s1_best.parent / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- resume state


def test_resume_state_is_removed_after_completion(runs):
    _, all_runs = runs
    for name in ("lora", "linear_probe", "standalone"):
        run_dir, res, _ = all_runs[name]
        assert res["status"] == "complete"
        assert not (run_dir / "checkpoint.pt").exists(), name
        assert (run_dir / "best.pt").is_file()


def test_keep_resume_state_keeps_a_lean_checkpoint_pt(runs):
    _, all_runs = runs
    run_dir, res, cfg = all_runs["keep"]
    state = load_file(run_dir / "checkpoint.pt")
    assert state["epoch"] == cfg.train.epochs and state["history"] == res["history"]
    assert state["lean"] and state["backbone"] == load_file(run_dir / "best.pt")["backbone"]
    model, _ = load_model(str(run_dir / "best.pt"))
    assert set(state["model"]) == set(trained_keys(model)) and not set(state["model"]) & set(frozen_keys(model))


def test_resuming_a_completed_run_does_not_train_again(runs, tmp_path, monkeypatch):
    _, all_runs = runs
    src, res, cfg = all_runs["lora"]
    copy = tmp_path / "lora"
    shutil.copytree(src, copy)

    def no_training(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(pipeline, "fit", no_training)
    again = run(cfg, resume=copy)
    assert again["status"] == "complete" and again["run_dir"] == str(copy)
    assert again["history"] == res["history"] and again["test"] == res["test"]
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in src.iterdir())


def test_a_shipped_backbone_is_found_in_the_installed_package(tmp_path):
    """A backbone shipped with roli (no backbone.checkpoint) is recorded as `package` and rebuilt from the package's
    own copy wherever roli is installed; its hash is still checked."""
    from roli.config import load_config

    cfg = load_config(data={"backbone": {"name": "vit_tiny_28_fmnist_robust"}, "data": {"name": "synthetic"},
                            "transfer": {"name": "linear_probe"}})
    model = build_transfer(cfg.transfer).apply(build_model(cfg.backbone, 4))
    with torch.no_grad():
        model.head.weight.normal_()
    best = model_checkpoint(model, cfg, {"epoch": 1})
    assert best["lean"] and best["backbone"]["source"] == "package"
    assert best["backbone"]["sha256"] == sha256sum(SHIPPED)
    path = tmp_path / "best.pt"
    atomic_save({**best, "backbone": {**best["backbone"], "file": "/old/site-packages/roli/checkpoints/x.pt"}}, path)
    loaded, _ = load_model(str(path))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    atomic_save({**best, "backbone": {**best["backbone"], "sha256": "0" * 64}}, path)
    with pytest.raises(CheckpointError, match="--backbone PATH"):
        load_model(str(path))
