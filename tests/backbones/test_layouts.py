"""roli.backbones.layouts: files written in each publisher's own key layout load with identical logits.

Each test builds a small random-init model in the source's code (torchvision Swin, an OpenAI-layout CLIP tower,
Facebook's ConvNeXt names, RobustBench's normalize_model wrapper, MadryLab's AttackerModel on the Hub), saves it
the way the source does, loads it through roli and compares outputs with the reference (atol 1e-5).
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torchvision
from timm.models.convnext import ConvNeXt
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from timm.models.xcit import Xcit

from roli.backbones.convert import convert_state_dict, detect_format, load_checkpoint
from roli.errors import CheckpointError
from tiny_models import perturb

pytestmark = pytest.mark.usefixtures("one_thread")


def features(net, x):
    with torch.no_grad():
        return net.eval().forward_features(x) if hasattr(net, "forward_features") else net(x)


X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- torchvision Swin


def tv_swin(seed=1):
    torch.manual_seed(seed)
    return perturb(torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2], num_classes=5), seed)


def timm_swin(seed=2):
    torch.manual_seed(seed)
    return perturb(SwinTransformer(img_size=32, patch_size=4, window_size=2, embed_dim=16, depths=(2, 2),
                                   num_heads=(1, 2), num_classes=5), seed)


def test_torchvision_swin_gives_identical_logits(tmp_path):
    tv = tv_swin()
    path = tmp_path / "swin_b.pth"
    torch.save(tv.state_dict(), path)
    net = timm_swin()
    report = load_checkpoint(net, path, head="head.fc")
    assert report["format"] == "auto -> torchvision_swin" and report["imagenet_layout"]
    assert report["dropped"] == {"buffer recomputed by timm (not a weight)": 4}  # 2 stages x 2 blocks
    conv = convert_state_dict(tv.state_dict(), net, "torchvision_swin")
    net.load_state_dict(conv.state, strict=True)  # the head too, so the whole network is compared
    with torch.no_grad():
        torch.testing.assert_close(net(X), tv(X), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- RobustBench normalize_model wrapper


class ImageNormalizer(torch.nn.Module):
    """RobustBench's normaliser (utils_architectures.ImageNormalizer): buffers mean, std of shape (1, 3, 1, 1)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def tiny_vit(seed):
    torch.manual_seed(seed)
    return perturb(VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                                     num_classes=5), seed)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module"])
def test_robustbench_wrapper_gives_identical_logits(tmp_path, wrap):
    src = tiny_vit(1)
    rb = torch.nn.Sequential()
    rb.add_module("normalize", ImageNormalizer((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    rb.add_module("model", src)
    state = rb.state_dict()
    if wrap == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "Liu2023Comprehensive.pt"
    torch.save({"state_dict": state, "epoch": 3} if wrap == "state_dict" else state, path)
    assert detect_format(state) == "robustbench"
    net = tiny_vit(2)
    report = load_checkpoint(net, path, head="head")
    assert report["format"] == "auto -> robustbench (timm)"
    assert report["mean"] == pytest.approx((0.4, 0.5, 0.6)) and report["std"] == pytest.approx((0.2, 0.25, 0.3))
    assert report["dropped"] == {"normaliser (applied by roli's PixelNormalize instead)": 2}
    torch.testing.assert_close(features(net, X), features(src, X), rtol=0, atol=1e-5)


def test_robustbench_wrapped_old_swin_is_converted_inside(tmp_path):
    """ARES's Swin as RobustBench loads it: `model.` around the old timm Swin layout."""
    src = timm_swin(1)
    legacy = {}
    for k, v in src.state_dict().items():
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        legacy[f"model.{k.replace('head.fc.', 'head.')}"] = v
    net = timm_swin(2)
    conv = convert_state_dict(legacy, net, "ares")
    assert conv.format == "ares (robustbench (timm_swin_legacy))"
    net.load_state_dict(conv.state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net(X), src(X), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- MadryLab on the Hugging Face Hub


def test_madry_hub_ckpt_layout(tmp_path):
    """The Hub's .ckpt: {'model': {module.normalizer.*, module.model.*, module.attacker.normalize.*,
    module.attacker.model.*}, 'epoch', 'optimizer', 'schedule'} with torchvision ResNet names."""
    tv = perturb(torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1],
                                                  num_classes=5), 1)
    sd = tv.state_dict()
    norm = {"new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
            "new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)}
    state = {f"module.normalizer.{k}": v for k, v in norm.items()} | {f"module.model.{k}": v for k, v in sd.items()}
    state |= {f"module.attacker.normalize.{k}": v for k, v in norm.items()}
    state |= {f"module.attacker.model.{k}": v.clone() for k, v in sd.items()}
    path = tmp_path / "imagenet_linf_4.ckpt"
    torch.save({"model": state, "epoch": 90, "optimizer": {"state": {}, "param_groups": []}, "schedule": None}, path)
    net = perturb(timm.models.resnet.ResNet(timm.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=5), 2)
    report = load_checkpoint(net, path, head="fc")
    assert report["format"] == "auto -> madry" and report["mean"] == pytest.approx((0.485, 0.456, 0.406))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tv_feat = torch.nn.Sequential(*list(tv.children())[:-2])(x)
    torch.testing.assert_close(features(net, x), tv_feat, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- CLIP visual tower (OpenAI layout)


def openai_clip_state(net: VisionTransformer, with_text: bool) -> dict:
    """The inverse of timm's conversion: OpenAI CLIP's `visual.*` names (and a stub text tower)."""
    out = {}
    for k, v in net.state_dict().items():
        if k.startswith("head."):
            continue
        k2 = (k.replace("patch_embed.proj", "conv1").replace("norm_pre", "ln_pre").replace("blocks.", "transformer.resblocks.")
              .replace("norm1", "ln_1").replace("norm2", "ln_2").replace("attn.qkv.", "attn.in_proj_")
              .replace("attn.proj", "attn.out_proj").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
        k2 = "ln_post." + k2[len("norm."):] if k2.startswith("norm.") else k2
        if k2 == "cls_token":
            k2, v = "class_embedding", v.reshape(-1)
        elif k2 == "pos_embed":
            k2, v = "positional_embedding", v[0]
        out[f"visual.{k2}"] = v.clone()
    out["visual.proj"] = net.head.weight.detach().t().clone()
    if with_text:
        out |= {"token_embedding.weight": torch.zeros(4, 8), "logit_scale": torch.tensor(1.0),
                "transformer.resblocks.0.ln_1.weight": torch.ones(8)}
    return out


def tiny_clip(seed, act="quick_gelu"):
    torch.manual_seed(seed)
    return perturb(VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, pre_norm=True,
                                     num_classes=12, act_layer=act), seed)


@pytest.mark.parametrize("tower_only", [False, True])
def test_openai_clip_layout_gives_identical_features(tmp_path, tower_only):
    src = tiny_clip(1)
    state = openai_clip_state(src, with_text=not tower_only)
    if tower_only:  # RobustVLM-style vision encoder files: no `visual.` prefix
        state = {k[len("visual."):]: v for k, v in state.items()}
    assert detect_format(state) == "open_clip"
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    net = tiny_clip(2)
    report = load_checkpoint(net, path, head="head")
    assert report["format"] == "auto -> open_clip"
    assert report["dropped"] == ({} if tower_only else {"CLIP text tower (not a vision weight)": 3})
    torch.testing.assert_close(features(net, X), features(src, X), rtol=0, atol=1e-5)
    conv = convert_state_dict(state, net, "open_clip")  # the projection becomes timm's head: the whole net agrees
    net.load_state_dict(conv.state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net(X), src(X) - src.head.bias, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- Facebook ConvNeXt, official XCiT


def test_facebook_convnext_layout(tmp_path):
    src = perturb(ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=5), 1)
    fb = {}
    for k, v in src.state_dict().items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.norm", "norm")
        fb[k.replace("head.fc.", "head.")] = v
    assert detect_format(fb) == "convnext_fb"
    net = perturb(ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=5), 2)
    conv = convert_state_dict(fb, net, "auto")
    net.load_state_dict(conv.state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net(X), src(X), rtol=0, atol=1e-5)


def test_official_xcit_layout():
    src = perturb(Xcit(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, cls_attn_layers=1,
                       num_classes=5, eta=1.0, tokens_norm=True), 1)
    state = {k.replace("pos_embed.", "pos_embeder."): v for k, v in src.state_dict().items()}
    assert detect_format(state) == "xcit"
    net = perturb(Xcit(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, cls_attn_layers=1,
                       num_classes=5, eta=1.0, tokens_norm=True), 2)
    conv = convert_state_dict(state, net, "auto")
    net.load_state_dict(conv.state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net(X), src(X), rtol=0, atol=1e-5)
    assert convert_state_dict(src.state_dict(), net, "xcit").state.keys() == net.state_dict().keys()  # timm-trained


# --------------------------------------------------------------------------- a layout the format contradicts


def test_old_swin_given_as_plain_timm_is_refused():
    """An old-layout Swin through `format: timm` would bypass the key filter: one line naming both layouts."""
    src = timm_swin(1)
    legacy = {re.sub(r"^layers\.1\.downsample", "layers.0.downsample", k): v for k, v in src.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"format is 'timm' but the file's keys are in the 'timm_swin_legacy' "
                                              r"layout: set `backbone.format: timm_swin_legacy`"):
        convert_state_dict(legacy, timm_swin(2), "timm")


def test_a_format_for_another_layout_is_refused():
    with pytest.raises(CheckpointError, match="format is 'torchvision_swin' but the file's keys are in the 'timm'"):
        convert_state_dict(timm_swin(1).state_dict(), timm_swin(2), "torchvision_swin")
