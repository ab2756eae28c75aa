"""LoRA's configurable targets: each kind of layer against the direct computation W + scale · B @ A on fixed tensors,
which layers each target wraps on each family, merging, refusals; the q,v default kept bit for bit; the adapter on a
1x1-conv MLP."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from roli.config import ConfigError, TransferConfig, from_dict
from roli.transfer import build_transfer
from roli.transfer.adapter import AdapterMlp
from roli.transfer.base import UnsupportedBackbone
from roli.transfer.lora import LORA_MODULES, LoRALayer, LoRAQKV, merge_lora
from tiny_models import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

C = 4


def _lora(model, **fields):
    cfg = from_dict(TransferConfig, {"name": "lora", "dropout": 0.0, **fields}, "transfer")
    return build_transfer(cfg).apply(model)


def _fixed(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _set_ab(layer: LoRALayer, seed: int) -> None:
    with torch.no_grad():
        layer.lora_A.copy_(_fixed(*layer.lora_A.shape, seed=seed))
        layer.lora_B.copy_(_fixed(*layer.lora_B.shape, seed=seed + 1))


def test_a_linear_layer_is_w_plus_scale_b_a():
    base = nn.Linear(6, 5)
    layer = LoRALayer(base, rank=2, alpha=3.0)
    _set_ab(layer, 1)
    x = _fixed(4, 6, seed=3)
    w = base.weight + 1.5 * layer.lora_B @ layer.lora_A  # scale = alpha / rank = 1.5
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ w.T + base.bias, atol=1e-5)
        assert torch.allclose(layer.merge()(x), layer(x), atol=1e-5)
    assert (layer.rank, layer.alpha, layer.scale, layer.conv) == (2, 3.0, 1.5, False)
    assert layer.lora_A.shape == (2, 6) and layer.lora_B.shape == (5, 2)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_pointwise_conv_is_w_plus_scale_b_a_per_pixel(stride):
    base = nn.Conv2d(6, 5, 1, stride=stride, bias=False)
    layer = LoRALayer(base, rank=3, alpha=6.0)
    _set_ab(layer, 5)
    x = _fixed(2, 6, 7, 7, seed=9)
    w = base.weight + 2.0 * (layer.lora_B @ layer.lora_A)[:, :, None, None]
    with torch.no_grad():
        assert torch.allclose(layer(x), F.conv2d(x, w, stride=stride), atol=1e-5)
        merged = layer.merge()
        assert type(merged) is nn.Conv2d and merged.stride == (stride, stride)
        assert torch.allclose(merged(x), layer(x), atol=1e-5)
    with pytest.raises(ValueError, match="1x1"):
        LoRALayer(nn.Conv2d(6, 5, 3))


def test_fused_qkv_slices_are_w_plus_scale_b_a_on_their_rows_only():
    base = nn.Linear(4, 12)
    m = LoRAQKV(base, rank=2, alpha=2.0, targets=("v", "q"))
    assert m.targets == ("q", "v") and m.slice_dim == 4 and m.scale == 1.0
    with torch.no_grad():
        for i, t in enumerate(m.targets):
            m.lora_A[t].copy_(_fixed(2, 4, seed=i))
            m.lora_B[t].copy_(_fixed(4, 2, seed=10 + i))
    x = _fixed(3, 4, seed=20)
    w = base.weight.detach().clone()
    w[0:4] += m.lora_B["q"] @ m.lora_A["q"]
    w[8:12] += m.lora_B["v"] @ m.lora_A["v"]
    with torch.no_grad():
        assert torch.allclose(m(x), x @ w.T + base.bias, atol=1e-5)
        assert torch.equal(m(x)[:, 4:8], base(x)[:, 4:8])  # k untouched, exactly


# target -> (family, the module paths it wraps, as a pattern on named_modules; the LoRA kind)
WRAPS = {
    ("vit", "q"): (r"blocks\.\d\.attn\.qkv", LoRAQKV), ("vit", "qkv"): (r"blocks\.\d\.attn\.qkv", LoRALayer),
    ("vit", "proj"): (r"blocks\.\d\.attn\.proj", LoRALayer), ("vit", "fc1"): (r"blocks\.\d\.mlp\.fc1", LoRALayer),
    ("swin", "k"): (r"layers\.\d\.blocks\.\d\.attn\.qkv", LoRAQKV),
    ("convnext", "fc2"): (r"stages\.\d\.blocks\.\d\.mlp\.fc2", LoRALayer),
    ("resnet", "pointwise"): (r"layer\d\.0\.(conv1|conv3|downsample\.1)", LoRALayer),
    ("xcit", "v"): (r"blocks\.\d\.attn\.qkv|cls_attn_blocks\.0\.attn\.v", (LoRAQKV, LoRALayer)),
}


@pytest.mark.parametrize("family, target", list(WRAPS))
def test_each_target_wraps_exactly_its_layers_and_merges(family, target):
    import re

    pattern, kind = WRAPS[family, target]
    plain = tiny_backbone(family, C).eval()
    with torch.no_grad():  # ConvNeXt's layer scale starts at 1e-6, which would hide any change of its MLPs
        for name, p in plain.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(1.0)
    expect = {n for n, m in plain.net.named_modules() if re.fullmatch(pattern, n)
              and (target != "pointwise" or m.kernel_size == (1, 1))}
    model = _lora(copy.deepcopy(plain), targets=[target])
    wrapped = {n for n, m in model.net.named_modules() if isinstance(m, LORA_MODULES)}
    assert wrapped == expect and expect
    assert all(isinstance(model.net.get_submodule(n), kind) for n in wrapped)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if ".lora_B" in n):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        x = torch.rand(3, 1, 28, 28, generator=g)
        out = model(x)
        assert not torch.allclose(out, plain(x), atol=1e-5)
        merged = merge_lora(copy.deepcopy(model))
        assert set(merged.state_dict()) == set(plain.state_dict())
        assert torch.allclose(merged(x), out, atol=1e-5)


def test_the_default_is_q_v_on_attention_mlp_on_convnext_pointwise_on_resnet():
    kinds = {}
    for family in ("vit", "swin", "xcit", "convnext", "resnet"):
        model = _lora(tiny_backbone(family, C))
        kinds[family] = {n.rsplit(".", 1)[-1] for n, m in model.net.named_modules() if isinstance(m, LORA_MODULES)}
    assert kinds["vit"] == kinds["swin"] == {"qkv"}
    assert kinds["xcit"] == {"qkv", "q", "v"}  # XCA's fused qkv and the class attention's q and v
    assert kinds["convnext"] == {"fc1", "fc2"}
    assert kinds["resnet"] == {"conv1", "conv3", "1"}  # bottleneck 1x1 convs and the shortcut's (downsample.1)


def test_default_targets_on_a_vit_are_the_old_q_v_lora_bit_for_bit():
    """Targets unset = [q, v] exactly as before they were configurable: same modules, keys, values and counts."""
    auto = _lora(tiny_backbone("vit", C, seed=0))
    explicit = _lora(tiny_backbone("vit", C, seed=0), targets=["q", "v"])
    a, e = auto.state_dict(), explicit.state_dict()
    assert list(a) == list(e) and all(torch.equal(a[k], e[k]) for k in a)
    names = sorted(n for n, p in auto.named_parameters() if p.requires_grad and "lora" in n)
    assert names == sorted(f"net.blocks.{i}.attn.qkv.lora_{m}.{t}" for i in range(4) for m in "AB" for t in "qv")
    d = auto.net.embed_dim
    assert sum(auto.get_parameter(n).numel() for n in names) == 4 * 2 * 16 * (d + d)


@pytest.mark.parametrize("family, targets, has", [
    ("convnext", ["q", "v"], "['fc1', 'fc2', 'mlp']"), ("resnet", ["fc1"], "['pointwise']"),
    ("vit", ["pointwise"], "['q', 'k', 'v', 'qkv', 'proj', 'fc1', 'fc2', 'mlp']"),
])
def test_a_target_the_backbone_lacks_is_one_line_naming_those_it_has(family, targets, has):
    model = tiny_backbone(family, C)
    with pytest.raises(UnsupportedBackbone, match="transfer.targets") as e:
        _lora(model, targets=targets)
    assert has in str(e.value) and "\n" not in str(e.value)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("targets", [["q", "qkv"], ["mlp", "fc1"], ["o"], []])
def test_overlapping_or_unknown_targets_are_config_errors(targets):
    with pytest.raises(ConfigError, match="targets"):
        from_dict(TransferConfig, {"name": "lora", "targets": targets}, "transfer")


def test_pointwise_and_fc1_on_a_conv_mlp_wrap_each_conv_once():
    net = timm.create_model("test_convnext", pretrained=False, conv_mlp=True, num_classes=C)
    from roli.backbones.normalize import Classifier, PixelNormalize

    model = _lora(Classifier(net, PixelNormalize((0.5,) * 3, (0.5,) * 3, input_size=32, in_chans=3)),
                  targets=["pointwise", "fc1"])
    layers = [m for m in model.net.modules() if isinstance(m, LoRALayer)]
    assert len(layers) == 2 * len([b for s in net.stages for b in s.blocks])  # fc1 and fc2 of every block
    assert not any(isinstance(m.base_layer, LoRALayer) for m in layers)


def test_an_adapter_on_a_conv_mlp_adapts_the_channels_of_each_pixel():
    net = timm.create_model("test_convnext", pretrained=False, conv_mlp=True)
    mlp = net.stages[0].blocks[0].mlp
    wrapped = AdapterMlp(mlp, reduction=4)
    with torch.no_grad():
        wrapped.adapter.up.weight.copy_(_fixed(*wrapped.adapter.up.weight.shape, seed=1))
        x = _fixed(2, mlp.fc1.in_channels, 5, 5, seed=2)
        m = mlp(x)
        a = wrapped.adapter
        per_pixel = a.up(F.gelu(a.down(m.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        assert torch.allclose(wrapped(x), m + per_pixel, atol=1e-6)
        assert not torch.allclose(per_pixel, torch.zeros_like(per_pixel))
