"""roli.backbones.factory: building roli and timm backbones with normalisation inside, never downloading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from roli.backbones import BACKBONES, BackboneError, build_model, create_backbone
from roli.backbones.normalize import Classifier, PixelNormalize
from roli.config import BackboneConfig
from roli.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def x():
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_vit_tiny_28_output_shape(x):
    model = create_backbone("vit_tiny_28", num_classes=5)
    assert isinstance(model, Classifier)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    assert model.head_name == "head"
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.2e6  # "0.8 M parameters"


def test_vit_tiny_28_default_classes():
    assert create_backbone("vit_tiny_28").head.out_features == 10


def test_normalisation_is_inside_the_model(x):
    model = create_backbone("vit_tiny_28", num_classes=5).eval()
    norm = model.normalize
    assert isinstance(norm, PixelNormalize)
    torch.testing.assert_close(norm.mean.flatten(), torch.tensor([0.2860]))
    torch.testing.assert_close(norm.std.flatten(), torch.tensor([0.3530]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - 0.2860) / 0.3530), rtol=1e-5, atol=1e-5)
        # the raw network sees normalised pixels: feeding it [0,1] pixels directly gives another answer
        assert not torch.allclose(model(x), model.net(x), atol=1e-3)
    # the statistics are buffers: saved with the model, moved with .to(), never trained
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    assert all(not n.startswith("normalize.") for n, _ in model.named_parameters())


def test_custom_mean_std_and_resize(x):
    model = create_backbone("vit_tiny_28", num_classes=2, mean=(0.5,), std=(0.25,)).eval()
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor([0.5]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - 0.5) / 0.25), rtol=1e-5, atol=1e-5)
        big = torch.nn.functional.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False)
        resized = create_backbone("vit_tiny_28", num_classes=2, input_size=28).eval()
        assert resized(big).shape == (3, 2)  # 56x56 input resized to the model's 28x28 inside the model


def test_drop_rates_reach_the_network():
    model = create_backbone("vit_tiny_28", num_classes=3, drop_rate=0.25, drop_path_rate=0.1)
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert 0.25 in dropouts
    drop_paths = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert drop_paths and max(drop_paths) == pytest.approx(0.1)


def test_every_dropout_knob_reaches_its_timm_module():
    """drop_rate is timm's pre-classifier dropout only; the reference's ViT dropout 0.1 (MLP + embeddings) is
    proj_drop_rate + pos_drop_rate (protocol B8)."""
    net = create_backbone("vit_tiny_28", num_classes=3, proj_drop_rate=0.1, pos_drop_rate=0.2, attn_drop_rate=0.3).net
    block = net.blocks[0]
    assert (block.mlp.drop1.p, block.mlp.drop2.p, block.attn.proj_drop.p) == (0.1, 0.1, 0.1)
    assert net.pos_drop.p == 0.2 and block.attn.attn_drop.p == 0.3 and net.head_drop.p == 0.0
    net = create_backbone("vit_tiny_28", num_classes=3, drop_rate=0.25).net
    assert net.head_drop.p == 0.25 and net.blocks[0].mlp.drop1.p == 0.0 and net.pos_drop.p == 0.0


def test_a_knob_the_architecture_lacks_is_a_clear_error():
    with pytest.raises(BackboneError, match=r"test_resnet does not accept \['pos_drop_rate'\].*ResNet: drop_rate"):
        create_backbone("test_resnet", num_classes=3, pos_drop_rate=0.1)


def test_a_roli_file_reused_as_backbone_keeps_its_normalisation_and_input_size(tmp_path, x):
    """A `roli export` file (or best.pt) carries its model's mean/std and resize: reusing it as backbone.checkpoint
    must not fall back to the architecture's defaults."""
    src = create_backbone("vit_tiny_28", num_classes=5, mean=(0.1,), std=(0.2,), input_size=28)
    state = {f"net.{k}": v for k, v in src.net.state_dict().items()} | {
        f"normalize.{k}": v for k, v in src.normalize.state_dict().items()}
    path = tmp_path / "exported.pt"
    torch.save({"format": "roli", "model": state, "config": {"backbone": {"name": "vit_tiny_28", "input_size": 28}},
                "classifier": "head", "num_classes": 5}, path)
    model = build_model(BackboneConfig(name="vit_tiny_28", checkpoint=str(path)), num_classes=5)
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.1])
    assert model.normalize.std.flatten().tolist() == pytest.approx([0.2]) and model.normalize.input_size == 28
    report = model.load_report
    assert report["normalisation_from"] == "checkpoint" and report["input_size"] == 28
    model.eval(), src.eval()
    with torch.no_grad():  # same backbone features: the stored weights and normalisation are both used
        torch.testing.assert_close(model.net.forward_features(model.normalize(x)),
                                   src.net.forward_features(src.normalize(x)))


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_architecture_by_name(x, name):
    assert timm.is_model(name) and name not in BACKBONES
    fields = {"input_size": 160} if name == "test_vit" else {}  # a ViT needs its own resolution
    model = create_backbone(name, num_classes=3, **fields).eval()
    with torch.no_grad():
        out = model(x)  # gray 28x28 [0,1] pixels: expanded to 3 channels (and resized) inside the model
    assert out.shape == (3, 3)
    assert torch.isfinite(out).all()
    assert model.normalize.mean.numel() == 3  # timm's own (ImageNet) statistics
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(model.net.pretrained_cfg["mean"]))
    assert model.head.out_features == 3
    expected_head = "fc" if name == "test_resnet" else "head"
    assert model.head_name == expected_head


@pytest.mark.parametrize(
    "fields",
    [
        {"pretrained": True},
        {"checkpoint": "hf-hub:timm/vit_base_patch16_224.augreg_in21k"},
        {"checkpoint": "https://example.com/weights.pth"},
        {"checkpoint": "timm/resnet18.a1_in1k"},
    ],
)
@pytest.mark.parametrize("name", ["vit_tiny_28", "resnet50"])
def test_downloads_refused_immediately(name, fields):
    t0 = time.perf_counter()
    with pytest.raises(BackboneError) as info:
        build_model(BackboneConfig(name=name, **fields), num_classes=10)
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    assert "backbone.checkpoint" in msg
    assert "never downloads" in msg


def test_unknown_backbone_lists_roli_backbones():
    with pytest.raises(BackboneError) as info:
        create_backbone("vit_enormous_9000", num_classes=2)
    msg = str(info.value)
    assert "'vit_enormous_9000'" in msg
    assert str(BACKBONES.names()) in msg
    assert "vit_tiny_28" in msg and "timm" in msg


def test_missing_local_checkpoint_is_a_checkpoint_error(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        create_backbone("vit_tiny_28", checkpoint=str(missing), num_classes=2)


def test_bad_field_values_are_rejected():
    with pytest.raises(ValueError, match="drop_rate must be in"):
        create_backbone("vit_tiny_28", drop_rate=1.5)
    with pytest.raises(TypeError):
        create_backbone("vit_tiny_28", not_a_field=1)


def test_shipped_backbones_load_their_own_weights():
    def backbone_state(name: str, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        sd = create_backbone(name, num_classes=3).net.state_dict()
        return {k: v for k, v in sd.items() if not k.startswith("head.")}

    robust = backbone_state("vit_tiny_28_fmnist_robust", 1)
    again = backbone_state("vit_tiny_28_fmnist_robust", 2)  # another seed: the loaded weights do not move
    standard = backbone_state("vit_tiny_28_fmnist_standard", 1)
    random = backbone_state("vit_tiny_28", 1)
    assert robust.keys() == standard.keys() == random.keys()
    assert all(torch.equal(v, again[k]) for k, v in robust.items())
    assert not torch.equal(robust["pos_embed"], random["pos_embed"])  # weights really came from the file
    assert not torch.equal(robust["blocks.0.attn.qkv.weight"], standard["blocks.0.attn.qkv.weight"])


def test_shipped_backbones_load_offline_through_timm(x):
    """timm users get roli's backbones from timm's own registry, from the file inside the package (no network)."""
    import roli.backbones  # noqa: F401  (registers them)

    assert {"vit_tiny_28", "vit_tiny_28_fmnist_robust", "vit_tiny_28_fmnist_standard"} <= set(timm.list_models("vit_tiny_28*"))
    net = timm.create_model("vit_tiny_28_fmnist_robust", pretrained=True, num_classes=10).eval()
    cfg = net.pretrained_cfg
    assert cfg["file"].endswith("vit_tiny_28_fmnist_robust.pt") and cfg["mean"] == (0.2860,)
    ours = create_backbone("vit_tiny_28_fmnist_robust", num_classes=10).eval()
    mean, std = torch.tensor(cfg["mean"]).view(1, -1, 1, 1), torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features((x - mean) / std), ours.net.forward_features(ours.normalize(x)))
    five = timm.create_model("vit_tiny_28_fmnist_standard", pretrained=True, num_classes=5)  # new head, same body
    assert five.head.out_features == 5
    torch.testing.assert_close(five.blocks[0].attn.qkv.weight, create_backbone("vit_tiny_28_fmnist_standard").net.blocks[0].attn.qkv.weight)


def test_the_shipped_tiny_vits_are_one_list():
    """SHIPPED names every shipped checkpoint once: roli's registry, timm's registry and the sweep's cost aliases
    all follow it, and each has its file in the package."""
    import timm

    from roli.backbones import BACKBONES
    from roli.backbones.tiny_vit import SHIPPED, shipped
    from roli.sweep.costs import ARCH_ALIASES

    files = sorted(p.stem for p in (Path(shipped(SHIPPED[0])).parent).glob("vit_tiny_28_*.pt"))
    assert sorted(SHIPPED) == files
    assert set(SHIPPED) <= set(BACKBONES.names()) and set(SHIPPED) <= set(timm.list_models("vit_tiny_28*"))
    assert {k for k, v in ARCH_ALIASES.items() if v == "vit_tiny_28"} == set(SHIPPED)
