"""Robust backbone families: every known entry builds its architecture with the right activation and maps its
source's keys; ConvStem ConvNeXt matches RobustBench's code; a file whose activation, architecture or
normalisation disagrees is a one-line error; the normalisation source and the pretraining threat are recorded.
"""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from timm.models.convnext import ConvNeXt

from roli.backbones import build_model
from roli.backbones import known as known_mod
from roli.backbones.convert import CONVERTERS
from roli.backbones.convstem import ConvStem, stem_widths
from roli.backbones.known import KnownCheckpoint, known_checkpoints
from roli.backbones.provenance import activations, threat_mismatch
from roli.config import BackboneConfig, ThreatConfig
from roli.errors import BackboneError, CheckpointError
from tiny_models import perturb

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = {  # entry -> (architecture, activation) as the publishers' model code defines them
    "ares_convnext_base_at": ("convnext_base", "gelu"), "ares_convnext_large_at": ("convnext_large", "gelu"),
    "ares_swin_large_at": ("swin_large_patch4_window7_224", "gelu"),
    "ares_resnet152_gelu_at": ("resnet152", "gelu"), "ares_wide_resnet50_2_gelu_at": ("wide_resnet50_2", "gelu"),
    "singh_convnext_base_convstem_at": ("convnext_base_convstem", "gelu"),
    "singh_convnext_large_convstem_at": ("convnext_large_convstem", "gelu"),
    "debenedetti_xcit_s12_at": ("xcit_small_12_p16_224", "gelu"), "madry_resnet50_linf_4": ("resnet50", "relu"),
    "torchvision_swin_b": ("swin_base_patch4_window7_224", "gelu"),
    "openai_clip_vit_b16": ("vit_base_patch16_clip_quickgelu_224", "quick_gelu"),
    "tecoa_clip_vit_l14_linf_4": ("vit_large_patch14_clip_quickgelu_224", "quick_gelu"),
}


def test_every_entry_is_complete():
    table = known_checkpoints()
    assert set(FAMILIES) <= set(table)
    for name, entry in table.items():
        assert timm.is_model(entry.arch) and entry.format in CONVERTERS, name
        assert entry.activation in ("relu", "gelu", "quick_gelu"), name
        assert entry.robust == (entry.pretrain_threat is not None) and entry.source, name
        assert entry.input_size == 224, name
    assert table["ares_convnext_base_at"].threat() == {"norm": "linf", "eps": pytest.approx(4 / 255)}
    assert table["madry_resnet50_l2_3"].threat() == {"norm": "l2", "eps": 3.0}
    assert table["tecoa_clip_vit_l14_linf_4"].mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert table["ares_swin_large_at"].preprocessing() == {"input_size": 224, "interpolation": "bicubic",
                                                            "crop_pct": 0.875}


@pytest.mark.parametrize("entry", sorted(FAMILIES))
def test_entry_builds_its_architecture_with_its_activation(entry, monkeypatch):
    """On the meta device (no memory): the network roli builds for the entry computes the entry's activation."""
    import roli.backbones.factory as factory

    arch, act = FAMILIES[entry]
    known = known_checkpoints()[entry]
    assert known.arch == arch and known.activation == act
    with torch.device("meta"):
        net, _ = factory._network(BackboneConfig(name=arch), 10, known)
    assert activations(net) == {act}, entry


# --------------------------------------------------------------------------- ConvStem ConvNeXt vs RobustBench


class RBLayerNorm(torch.nn.Module):
    """RobustBench's channels-first LayerNorm (convstem_models.LayerNorm), written out by hand."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = torch.nn.Parameter(torch.ones(n)), torch.nn.Parameter(torch.zeros(n)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


class ConvBlock3(torch.nn.Module):
    """RobustBench's ConvNeXt-B/L stem: conv s2, conv s2 (1.5x), conv s1 (2x), each + LayerNorm + GELU."""

    def __init__(self, p):
        super().__init__()
        q = int(p * 1.5)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, p, 3, 2, 1), RBLayerNorm(p), torch.nn.GELU(),
                                        torch.nn.Conv2d(p, q, 3, 2, 1), RBLayerNorm(q), torch.nn.GELU(),
                                        torch.nn.Conv2d(q, 2 * p, 3, 1, 1), RBLayerNorm(2 * p), torch.nn.GELU())

    def forward(self, x):
        return self.stem(x)


def test_convstem_convnext_matches_robustbench(tmp_path):
    ref = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=5)
    ref.stem = ConvBlock3(4)  # RobustBench: model.stem = ConvBlock3(planes)
    ref = perturb(ref, 1)
    net = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=5)
    net.stem = ConvStem(stem_widths(8, 4, three=True), last_stride=1)
    path = tmp_path / "Singh2023Revisiting_ConvNeXt-B-ConvStem.pt"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)
    from roli.backbones.convert import load_checkpoint

    report = load_checkpoint(net, path, head="head.fc", fmt="robustbench")
    assert report["format"] == "robustbench (timm)"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x), ref.forward_features(x), rtol=0, atol=1e-5)


def test_full_size_convstem_keys_match_robustbench_names():
    with torch.device("meta"):
        net = timm.create_model("convnext_base_convstem", pretrained=False)
    keys = [k for k in net.state_dict() if k.startswith("stem.")]
    assert keys[:2] == ["stem.stem.0.weight", "stem.stem.0.bias"] and "stem.stem.7.weight" in keys
    assert net.stem.stem[6].out_channels == 128 and net.stem.stem[3].out_channels == 96
    with pytest.raises(ValueError, match="does not feed a first stage of width 96"):
        stem_widths(96, 64, three=True)


# --------------------------------------------------------------------------- disagreements are errors


@pytest.fixture
def tiny_table(monkeypatch):
    """Entries on timm's tiny test models, so the whole build_model path runs in a second."""
    entries = {
        "tiny_gelu_resnet": KnownCheckpoint(name="tiny_gelu_resnet", arch="test_resnet", format="timm",
                                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                            activation="gelu", pretrain_threat=ThreatConfig(eps=4 / 255),
                                            robust=True, source="the test suite", file="gelu_resnet.pth"),
    }
    table = {**known_checkpoints(), **entries}
    monkeypatch.setattr(known_mod, "known_checkpoints", lambda: table)
    return table


def test_gelu_entry_builds_gelu_and_loads_identically(tmp_path, tiny_table):
    src = perturb(timm.create_model("test_resnet", act_layer="gelu", num_classes=3), 1)
    path = tmp_path / "some_name.pth"
    torch.save(src.state_dict(), path)
    model = build_model(BackboneConfig(name="tiny_gelu_resnet", checkpoint=str(path)), 3).eval()
    assert model.load_report["activation"] == ["gelu"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.net.forward_features(model.normalize(x)),
                                   src.forward_features(model.normalize(x)), rtol=0, atol=1e-5)


def test_known_file_by_arch_name_into_the_wrong_arch_is_an_error(tmp_path, tiny_table):
    path = tmp_path / "gelu_resnet.pth"  # the entry's distributed file name
    torch.save(timm.create_model("test_resnet", act_layer="gelu").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"gelu_resnet.pth is the known checkpoint tiny_gelu_resnet \(by its "
                                              r"file name\).*backbone.name is test_vit.*backbone.name: tiny_gelu"):
        build_model(BackboneConfig(name="test_vit", checkpoint=str(path)), 3)
    model = build_model(BackboneConfig(name="test_resnet", checkpoint=str(path)), 3)  # right arch: the entry applies
    assert model.load_report["known"] == "tiny_gelu_resnet" and model.load_report["activation"] == ["gelu"]


def test_gelu_metadata_into_relu_arch_is_an_error(tmp_path):
    src = timm.create_model("test_resnet", act_layer="gelu")
    path = tmp_path / "r.pth"
    torch.save({"state_dict": src.state_dict(), "act_layer": "gelu"}, path)
    with pytest.raises(BackboneError, match="the file's metadata says the weights were trained with gelu but "
                                            "test_resnet computes relu: the keys would load and give wrong logits"):
        build_model(BackboneConfig(name="test_resnet", checkpoint=str(path)), 3)


def test_quickgelu_clip_into_gelu_clip_is_an_error():
    """A QuickGELU CLIP file (metadata, e.g. open_clip_config.json's quick_gelu) into timm's GELU CLIP ViT."""
    from timm.models.vision_transformer import VisionTransformer

    from roli.backbones.provenance import check_file

    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, pre_norm=True)
    with pytest.raises(BackboneError, match="trained with quick_gelu but vit_base_patch16_clip_224 computes gelu.*"
                                            "backbone.name: vit_base_patch16_clip_quickgelu_224"):
        check_file(net, "vit_base_patch16_clip_224", None, {"activation": "QuickGELU"})
    check_file(net, "vit_base_patch16_clip_224", None, {"activation": "gelu"})  # agreeing: no error
    with pytest.raises(BackboneError, match="names architecture resnet50 but backbone.name builds vit_x"):
        check_file(net, "vit_x", None, {"arch": "resnet50"})


def test_stored_normalisation_against_the_entry_is_an_error(tmp_path, tiny_table):
    src = timm.create_model("test_resnet", act_layer="gelu")
    path = tmp_path / "x.pth"
    torch.save({"state_dict": src.state_dict(), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, path)
    with pytest.raises(CheckpointError, match=r"stores mean/std \[0.5, 0.5, 0.5\]/.*tiny_gelu_resnet says"):
        build_model(BackboneConfig(name="tiny_gelu_resnet", checkpoint=str(path)), 3)


# --------------------------------------------------------------------------- normalisation source, threat


def test_architecture_default_normalisation_warns(tmp_path, caplog):
    """A plain timm file by architecture name: nothing says its normalisation, so the default is used, loudly."""
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="roli.backbones.provenance"):
        model = build_model(BackboneConfig(name="test_vit", checkpoint=str(path)), 3)
    assert model.load_report["normalisation_from"] == "architecture"
    assert "says nothing about its normalisation" in caplog.text and "backbone.mean/std" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="roli.backbones.provenance"):
        model = build_model(BackboneConfig(name="test_vit", checkpoint=str(path), mean=(0.1,), std=(0.2,)), 3)
    assert model.load_report["normalisation_from"] == "config" and "normalisation" not in caplog.text


def test_normalisation_order():
    """recipe > known entry > the file's own > the layout (torchvision/MadryLab: ImageNet) > architecture."""
    from roli.backbones.provenance import IMAGENET, normalisation

    entry = known_checkpoints()["tecoa_clip_vit_l14_linf_4"]
    default = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    layout = {"imagenet_layout": True, "format": "auto -> torchvision_vit", "file": "f"}
    cfg = BackboneConfig(name="vit_base_patch16_224")
    assert normalisation(cfg, None, {}, layout, default) == (IMAGENET["mean"], IMAGENET["std"],
                                                              "layout (auto -> torchvision_vit)")
    stored = {"mean": (0.1,) * 3, "std": (0.2,) * 3}
    assert normalisation(cfg, None, stored, layout, default) == ((0.1,) * 3, (0.2,) * 3, "checkpoint")
    assert normalisation(cfg, entry, {}, layout, default)[2] == "known_checkpoints.yaml"
    mine = BackboneConfig(name="vit_base_patch16_224", mean=(0.3,), std=(0.3,))
    assert normalisation(mine, entry, {}, layout, default) == ((0.3,), (0.3,), "config")
    assert normalisation(cfg, None, {}, None, default)[2] == "architecture"


def test_threat_mismatch_sentence(tmp_path, tiny_table):
    src = timm.create_model("test_resnet", act_layer="gelu")
    path = tmp_path / "x.pth"
    torch.save(src.state_dict(), path)
    rep = build_model(BackboneConfig(name="tiny_gelu_resnet", checkpoint=str(path)), 3).load_report
    assert rep["pretrain_threat"] == {"norm": "linf", "eps": pytest.approx(4 / 255)}
    assert rep["pretrain_threat_from"] == "known entry tiny_gelu_resnet"
    text = threat_mismatch(rep, ThreatConfig(eps=8 / 255))
    assert text == ("the backbone was pretrained against linf eps 4/255 (known entry tiny_gelu_resnet) but this "
                    "run's threat model is linf eps 8/255")
    assert threat_mismatch(rep, ThreatConfig(eps=4 / 255)) is None
    assert "l2 eps 0.5" in threat_mismatch(rep, ThreatConfig(norm="l2", eps=0.5))
    plain = build_model(BackboneConfig(name="test_resnet"), 3).load_report
    assert plain["pretrain_threat"] is None and threat_mismatch(plain, ThreatConfig()) is None


def test_file_metadata_threat(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"state_dict": timm.create_model("test_resnet").state_dict(),
                "pretrain_threat": {"norm": "l2", "eps": 3.0}}, path)
    rep = build_model(BackboneConfig(name="test_resnet", checkpoint=str(path)), 3).load_report
    assert rep["pretrain_threat"] == {"norm": "l2", "eps": 3.0} and rep["pretrain_threat_from"] == "checkpoint metadata"


def test_results_json_records_the_threat_mismatch(finished_run):
    """The shared run fine-tunes vit_tiny_28 (random init: nothing pretrained, no mismatch); the shipped robust
    backbone's own roli file says it was adversarially trained at L-inf 0.1, so a run at 8/255 records that."""
    from roli.backbones import create_backbone

    _, results, _ = finished_run
    assert results["backbone"]["pretrain_threat"] is None and results["threat_mismatch"] is None
    rep = create_backbone("vit_tiny_28_fmnist_robust", num_classes=10).load_report
    assert rep["pretrain_threat"] == {"norm": "linf", "eps": pytest.approx(0.1)}
    assert rep["pretrain_threat_from"] == "checkpoint metadata"
    assert threat_mismatch(rep, ThreatConfig(eps=0.1)) is None
    assert "linf eps 0.1 (checkpoint metadata) but this run's threat model is linf eps 8/255" in threat_mismatch(
        rep, ThreatConfig(eps=8 / 255))
    assert create_backbone("vit_tiny_28_fmnist_standard", num_classes=10).load_report["pretrain_threat"] is None
