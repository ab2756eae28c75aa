"""roli.backbones.convert / known: published checkpoint layouts -> timm, round trips with identical outputs.

Each test builds a random-init model (tiny variants with the real key layout), writes its weights the way the
publisher's code does (old timm / Microsoft Swin, torchvision ViT, MadryLab robustness), loads the file through
roli and checks the outputs are identical. Full-size architectures are only built on the meta device (no memory).
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torchvision
from timm.models.resnet import Bottleneck as TimmBottleneck
from timm.models.resnet import ResNet as TimmResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torchvision.models.resnet import Bottleneck as TvBottleneck
from torchvision.models.resnet import ResNet as TvResNet

from roli.backbones import build_model
from roli.backbones import known as known_mod
from roli.backbones.convert import CONVERTERS, convert_state_dict, detect_format, load_checkpoint
from roli.backbones.known import KnownCheckpoint, known_checkpoints
from roli.config import BackboneConfig, ConfigError, ThreatConfig, load_config
from roli.errors import CheckpointError
from roli.files import sha256sum
from tiny_models import perturb

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_swin(seed: int = 0) -> SwinTransformer:
    # Three stages: downsample into stages 1 and 2; the last stage's window equals its resolution (no shift, no
    # attn_mask), as in Swin-B's 7x7 last stage.
    torch.manual_seed(seed)
    net = SwinTransformer(img_size=32, patch_size=4, window_size=2, embed_dim=16, depths=(2, 2, 2),
                          num_heads=(1, 2, 4), num_classes=5)
    return perturb(net, seed)


def legacy_swin_state(net: SwinTransformer) -> dict[str, torch.Tensor]:
    """The keys old timm (<= 0.6) and Microsoft's Swin code save: downsample at the end of the previous stage,
    `head.*`, plus the relative_position_index and attn_mask buffers."""
    state = dict(net.state_dict())
    state.update({k: v for k, v in net.named_buffers() if k.endswith(("relative_position_index", "attn_mask"))})
    out = {}
    for k, v in state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v.clone()
    return out


def tiny_vit(seed: int = 0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    return perturb(VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                                     num_classes=5, **kw), seed)


def tv_vit(seed: int = 0) -> torchvision.models.VisionTransformer:
    torch.manual_seed(seed)
    return perturb(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                        hidden_dim=16, mlp_dim=32, num_classes=5), seed)


def madry_state(resnet: torch.nn.Module, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)) -> dict:
    """robustness.attacker.AttackerModel inside DataParallel: module.{normalizer,model,attacker.*}."""
    sd = resnet.state_dict()
    norm = {"new_mean": torch.tensor(mean).view(3, 1, 1), "new_std": torch.tensor(std).view(3, 1, 1)}
    out = {f"module.normalizer.{k}": v for k, v in norm.items()}
    out |= {f"module.model.{k}": v.clone() for k, v in sd.items()}
    out |= {f"module.attacker.normalize.{k}": v for k, v in norm.items()}
    out |= {f"module.attacker.model.{k}": v.clone() for k, v in sd.items()}
    return out


@pytest.fixture
def x32():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def logits(net, x):
    with torch.no_grad():
        return net.eval()(x)


# --------------------------------------------------------------------------- Swin: old timm / Microsoft layout


@pytest.mark.parametrize("wrap", ["ares_plain", "ms_model"])
def test_legacy_swin_round_trip(tmp_path, x32, wrap):
    src = tiny_swin(seed=1)
    legacy = legacy_swin_state(src)
    assert "layers.0.downsample.reduction.weight" in legacy and "head.weight" in legacy  # really the old layout
    assert any(k.endswith("attn_mask") for k in legacy) and any(k.endswith("relative_position_index") for k in legacy)
    path = tmp_path / "swin.pth"
    torch.save(legacy if wrap == "ares_plain" else {"model": legacy}, path)

    fresh = tiny_swin(seed=2)
    assert not torch.allclose(logits(fresh, x32), logits(src, x32))
    report = load_checkpoint(fresh, path, head="head.fc", fmt="auto")
    assert report["format"] == "auto -> timm_swin_legacy"
    assert report["renamed"] == 8  # layers.{0,1}.downsample.{norm.weight,norm.bias,reduction.weight}, head.{weight,bias}
    n_buffers = sum(k.endswith(("relative_position_index", "attn_mask")) for k in legacy)
    assert report["dropped"] == {"buffer recomputed by timm (not a weight)": n_buffers}
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(x32), src.forward_features(x32), rtol=0, atol=0)
    # With the head too (same class count): the whole network computes the same logits.
    conv = convert_state_dict(legacy, fresh, "ares")
    fresh.load_state_dict(conv.state, strict=True)
    torch.testing.assert_close(logits(fresh, x32), logits(src, x32), rtol=0, atol=0)


def test_current_timm_swin_is_identity(tmp_path, x32):
    src = tiny_swin(seed=1)
    path = tmp_path / "swin_new.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)  # a DDP-saved file
    fresh = tiny_swin(seed=2)
    report = load_checkpoint(fresh, path, head="head.fc", fmt="ares")
    assert report["format"] == "ares (timm)" and report["dropped"] == {}
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(x32), src.forward_features(x32), rtol=0, atol=0)


def test_legacy_swin_window_mismatch_is_an_error(tmp_path):
    legacy = legacy_swin_state(tiny_swin())
    idx = next(k for k in legacy if k.endswith("relative_position_index"))
    legacy[idx] = legacy[idx].flip(0)
    with pytest.raises(CheckpointError, match="window size"):
        convert_state_dict(legacy, tiny_swin(), "timm_swin_legacy")


def test_full_size_swin_b_legacy_keys_map_exactly():
    """On the meta device: the old Swin-B key set maps onto today's timm swin_base_patch4_window7_224 exactly."""
    with torch.device("meta"):
        net = timm.create_model("swin_base_patch4_window7_224", pretrained=False)
    legacy = legacy_swin_state(net)
    assert "layers.2.downsample.reduction.weight" in legacy and not any(k.startswith("layers.3.downsample") for k in legacy)
    conv = convert_state_dict(legacy, net, "auto")
    own = net.state_dict()
    assert set(conv.state) == set(own)
    assert all(conv.state[k].shape == own[k].shape for k in own)


# --------------------------------------------------------------------------- torchvision ViT


@pytest.mark.parametrize("mlp_names", ["current", "linear_1"])
def test_torchvision_vit_gives_identical_logits(tmp_path, x32, mlp_names):
    tv = tv_vit(seed=1)
    state = tv.state_dict()
    if mlp_names == "linear_1":  # torchvision < 0.13 files
        state = {re.sub(r"mlp\.0\.", "mlp.linear_1.", re.sub(r"mlp\.3\.", "mlp.linear_2.", k)): v
                 for k, v in state.items()}
    path = tmp_path / "vit_b_16.pth"
    torch.save(state, path)
    net = tiny_vit(seed=2)
    report = load_checkpoint(net, path, head="head", fmt="auto")
    assert report["format"] == "auto -> torchvision_vit"
    conv = convert_state_dict(torch.load(path, weights_only=True), net, "torchvision_vit")
    net.load_state_dict(conv.state, strict=True)
    torch.testing.assert_close(logits(net, x32), logits(tv, x32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tv_name, arch, fmt", [("vit_b_16", "vit_base_patch16_224", "torchvision_vit"),
                                                 ("swin_b", "swin_base_patch4_window7_224", "torchvision_swin")])
def test_full_size_torchvision_files_map_exactly(tv_name, arch, fmt):
    with torch.device("meta"):
        tv = getattr(torchvision.models, tv_name)()
        net = timm.create_model(arch, pretrained=False)
    conv = convert_state_dict(tv.state_dict(), net, "auto")
    own = net.state_dict()
    assert conv.format == f"auto -> {fmt}"
    assert set(conv.state) == set(own)
    assert all(conv.state[k].shape == own[k].shape for k in own)


# --------------------------------------------------------------------------- MadryLab robustness ResNet


def test_madry_resnet_round_trip(tmp_path):
    torch.manual_seed(0)
    tv = perturb(TvResNet(TvBottleneck, [1, 1, 1, 1], num_classes=5), 1)
    path = tmp_path / "imagenet_linf_4.pt"
    torch.save({"model": madry_state(tv), "epoch": 90, "optimizer": {"state": {}, "param_groups": []}}, path)
    net = perturb(TimmResNet(TimmBottleneck, [1, 1, 1, 1], num_classes=5), 2)
    report = load_checkpoint(net, path, head="fc", fmt="auto")
    assert report["format"] == "auto -> madry"
    assert report["mean"] == pytest.approx((0.4, 0.5, 0.6)) and report["std"] == pytest.approx((0.2, 0.25, 0.3))
    n = len(tv.state_dict())
    assert report["dropped"] == {"the attacker's copy of module.model (identical)": n,
                                 "normaliser (applied by roli's PixelNormalize instead)": 4}
    assert report["renamed"] == n and report["loaded"] == n - 2  # all but the head (fc.weight, fc.bias)
    net.fc.load_state_dict(tv.fc.state_dict())  # the head is never loaded from a backbone file
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(net, x), logits(tv, x), rtol=0, atol=0)


def test_madry_attacker_copy_must_match():
    tv = TvResNet(TvBottleneck, [1, 1, 1, 1], num_classes=5)
    state = madry_state(tv)
    state["module.attacker.model.fc.bias"] = state["module.attacker.model.fc.bias"] + 1
    with pytest.raises(CheckpointError, match="differs from its module.model"):
        convert_state_dict(state, tv, "madry")


def test_madry_through_build_model_takes_the_files_normalisation(tmp_path):
    """The whole path: timm arch name + file -> model whose normaliser is the file's."""
    src = perturb(timm.create_model("test_resnet", num_classes=3), 1)
    path = tmp_path / "madry.pt"
    torch.save({"model": madry_state(src), "epoch": 1}, path)
    model = build_model(BackboneConfig(name="test_resnet", checkpoint=str(path)), num_classes=3).eval()
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    rep = model.load_report
    assert rep["normalisation_from"] == "checkpoint" and rep["checkpoint"]["sha256"] == sha256sum(path)
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.net.forward_features(x), src.forward_features(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- generic option, detection, errors


def test_key_map_rules_for_another_layout(tmp_path, x32):
    src = tiny_vit(seed=1)
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["ema_step"] = torch.tensor(3)
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": state}, path)
    net = tiny_vit(seed=2)
    with pytest.raises(CheckpointError, match="backbone.format or backbone.key_map"):
        load_checkpoint(net, path, head="head", fmt="timm")
    report = load_checkpoint(net, path, head="head", fmt="timm", key_map=[(r"^backbone\.", ""), (r"^ema_step$", "")])
    assert report["dropped"] == {"dropped by a key rule": 1} and report["dropped_examples"] == ["ema_step"]
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x32), src.forward_features(x32), rtol=0, atol=0)


def test_key_map_is_validated_in_the_config():
    cfg = load_config(data={"backbone": {"name": "test_vit", "key_map": [["^a\\.", "b."]], "format": "timm"}})
    assert cfg.backbone.key_map == (("^a\\.", "b."),)
    with pytest.raises(ConfigError, match="regular expression"):
        load_config(data={"backbone": {"key_map": [["(", ""]]}})
    with pytest.raises(ConfigError, match="format 'safetensor' is unknown"):
        load_config(data={"backbone": {"format": "safetensor"}})


def test_detect_format():
    assert detect_format(tiny_vit().state_dict()) == "timm"
    assert detect_format(tv_vit().state_dict()) == "torchvision_vit"
    assert detect_format(legacy_swin_state(tiny_swin())) == "timm_swin_legacy"
    assert detect_format(madry_state(TvResNet(TvBottleneck, [1, 1, 1, 1]))) == "madry"
    assert {"timm", "timm_swin_legacy", "ms_swin", "ares", "torchvision_vit", "madry"} <= set(CONVERTERS.names())


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "swin.pth"
    torch.save(legacy_swin_state(tiny_swin()), path)
    with pytest.raises(CheckpointError, match="another architecture|does not fit this architecture"):
        load_checkpoint(tiny_vit(), path, head="head")


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(tiny_vit().state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="truncated|not a"):
        load_checkpoint(tiny_vit(), path, head="head")


class _Code:
    pass


def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "code.pth"
    torch.save({"model": tiny_vit().state_dict(), "args": _Code()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tiny_vit(), path, head="head")


# --------------------------------------------------------------------------- the known-checkpoint table


def test_known_table_is_consistent():
    table = known_checkpoints()
    assert {"ares_swin_base_at", "ares_vit_base_at", "torchvision_vit_b_16", "ms_swin_base_224",
            "madry_resnet50_linf_4"} <= set(table)
    for name, entry in table.items():
        assert timm.is_model(entry.arch), name
        assert entry.format in CONVERTERS, name
        assert len(entry.mean) == len(entry.std) == 3
        assert entry.robust == (entry.pretrain_threat is not None), name
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{8,64}", entry.sha256), name
    assert table["ares_swin_base_at"].pretrain_eps == pytest.approx(4 / 255)


@pytest.fixture
def fake_known(monkeypatch):
    """A known entry on timm's tiny test_vit, so the whole path runs in a second."""
    entry = KnownCheckpoint(name="tiny_known", arch="test_vit", format="timm", mean=(0.1, 0.2, 0.3),
                            std=(0.3, 0.2, 0.1), pretrain_threat=ThreatConfig(eps=4 / 255), robust=True,
                            source="the test suite")
    table = {**known_checkpoints(), "tiny_known": entry}
    monkeypatch.setattr(known_mod, "known_checkpoints", lambda: table)
    return entry


def test_known_name_needs_a_file(fake_known):
    with pytest.raises(CheckpointError, match="known checkpoint.*the test suite.*backbone.name: test_vit"):
        build_model(BackboneConfig(name="tiny_known"), num_classes=3)


def test_known_name_loads_with_table_normalisation(tmp_path, fake_known, monkeypatch):
    src = perturb(timm.create_model("test_vit", num_classes=3), 1)
    path = tmp_path / "tiny.pth"
    torch.save(src.state_dict(), path)
    model = build_model(BackboneConfig(name="tiny_known", checkpoint=str(path)), num_classes=7).eval()
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    rep = model.load_report
    assert rep["known"] == "tiny_known" and rep["arch"] == "test_vit" and rep["pretrain_eps"] == pytest.approx(4 / 255)
    assert rep["checkpoint"]["missing_head"] == ["head.bias", "head.weight"]
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model.net.forward_features(x), src.forward_features(x), rtol=0, atol=0)
    # A published hash that does not match the file is an error naming both.
    table = {**known_mod.known_checkpoints(), "tiny_known": KnownCheckpoint(**{**fake_known.__dict__,
                                                                              "sha256": "deadbeef"})}
    monkeypatch.setattr(known_mod, "known_checkpoints", lambda: table)
    with pytest.raises(CheckpointError, match="does not match the known checkpoint's deadbeef"):
        build_model(BackboneConfig(name="tiny_known", checkpoint=str(path)), num_classes=7)


def test_roli_list_shows_known_checkpoints_and_formats(capsys):
    from roli.cli.main import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, entry in known_checkpoints().items():
        assert f"{name}: {entry.arch}, format {entry.format}" in out
    formats = "ares, convnext_fb, madry, ms_swin, open_clip, robustbench, timm, timm_swin_legacy, torchvision_swin"
    assert f"checkpoint formats (backbone.format): auto, {formats}, torchvision_vit, xcit" in out
    for dataset in ("cifar10", "cifar100", "caltech256", "cub200", "stanford_dogs", "image_folder"):
        assert dataset in out
