"""Offline checkpoint folders: timm `local-dir:` folders and Hugging Face cache folders (models--timm--NAME with
snapshots/<rev>/) are read without any hub call; config.json's architecture and mean/std are used and checked."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from roli.backbones import build_model
from roli.backbones.offline import locate
from roli.config import BackboneConfig
from roli.errors import BackboneError, CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


def src_vit(seed=1):
    torch.manual_seed(seed)
    net = timm.create_model("test_vit", num_classes=3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def timm_config(arch="test_vit", mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1)):
    return {"architecture": arch, "num_classes": 3,
            "pretrained_cfg": {"mean": list(mean), "std": list(std), "input_size": [3, 160, 160],
                               "interpolation": "bicubic", "crop_pct": 0.95}}


def hf_cache(root, net, config, safetensors=True, rev="abc123"):
    """The layout huggingface_hub writes: models--timm--NAME/{refs/main, snapshots/<rev>/...}."""
    snap = root / "models--timm--test_vit" / "snapshots" / rev
    snap.mkdir(parents=True)
    (root / "models--timm--test_vit" / "refs").mkdir()
    (root / "models--timm--test_vit" / "refs" / "main").write_text(rev)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if safetensors:
        save_file(state, str(snap / "model.safetensors"))
    else:
        torch.save(state, snap / "pytorch_model.bin")
    (snap / "config.json").write_text(json.dumps(config))
    return root / "models--timm--test_vit"


@pytest.mark.parametrize("safetensors", [True, False])
def test_hf_cache_folder_loads_offline_with_its_config(tmp_path, monkeypatch, safetensors):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("a hub call was made")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    src = src_vit()
    folder = hf_cache(tmp_path, src, timm_config(), safetensors)
    model = build_model(BackboneConfig(name="test_vit", checkpoint=str(folder)), 3).eval()
    rep = model.load_report
    assert rep["normalisation_from"] == "checkpoint" and rep["mean"] == pytest.approx([0.1, 0.2, 0.3])
    assert rep["checkpoint"]["config_file"] == "config.json"
    assert rep["preprocessing"] == {"input_size": [3, 160, 160], "interpolation": "bicubic", "crop_pct": 0.95}
    assert rep["checkpoint"]["file"].endswith("model.safetensors" if safetensors else "pytorch_model.bin")
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model.net.forward_features(x), src.forward_features(x), rtol=0, atol=1e-5)


def test_local_dir_prefix_and_snapshot_folder(tmp_path):
    src = src_vit()
    root = hf_cache(tmp_path, src, timm_config())
    snap = root / "snapshots" / "abc123"
    for spec in (f"local-dir:{snap}", str(snap)):
        model = build_model(BackboneConfig(name="test_vit", checkpoint=spec), 3)
        assert model.load_report["checkpoint"]["loaded"] > 0


def test_config_architecture_must_match(tmp_path):
    folder = hf_cache(tmp_path, src_vit(), timm_config(arch="vit_base_patch16_224"))
    with pytest.raises(BackboneError, match="names architecture vit_base_patch16_224 but backbone.name builds "
                                            "test_vit: set `backbone.name: vit_base_patch16_224`"):
        build_model(BackboneConfig(name="test_vit", checkpoint=str(folder)), 3)


def test_open_clip_config_quick_gelu_is_checked(tmp_path):
    snap = tmp_path / "clip"
    snap.mkdir()
    torch.save(src_vit().state_dict(), snap / "open_clip_pytorch_model.bin")
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True},
                                                            "preprocess_cfg": {"mean": [0.4] * 3, "std": [0.3] * 3}}))
    assert locate(snap).config_file == "open_clip_config.json"
    with pytest.raises(BackboneError, match="metadata says the weights were trained with quick_gelu but test_vit "
                                            "computes gelu"):
        build_model(BackboneConfig(name="test_vit", checkpoint=str(snap)), 3)


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nothing.pth does not exist; .*roli never downloads"):
        build_model(BackboneConfig(name="test_vit", checkpoint=str(tmp_path / "nothing.pth")), 3)
    empty = tmp_path / "models--timm--x" / "snapshots" / "r1"
    empty.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds no weights file"):
        locate(tmp_path / "models--timm--x")
    (tmp_path / "models--timm--x" / "snapshots" / "r2").mkdir()
    with pytest.raises(CheckpointError, match="holds 2 snapshots and no refs/main"):
        locate(tmp_path / "models--timm--x")
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        build_model(BackboneConfig(name="test_vit", checkpoint=str(bad)), 3)
