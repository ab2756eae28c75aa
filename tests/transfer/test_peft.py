"""Parameter-efficient methods: LoRA, adapters, VPT and BitFit on a tiny ViT, a tiny Swin and a ResNet (VPT on Swin:
test_vpt_swin.py)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from roli.backbones import create_backbone
from roli.backbones.normalize import Classifier, PixelNormalize
from roli.config import ConfigError, TransferConfig, from_dict
from roli.transfer import build_transfer
from roli.transfer.adapter import Adapter, AdapterConfig
from roli.transfer.base import UnsupportedBackbone, set_train_mode
from roli.transfer.bitfit import BitFitConfig
from roli.transfer.heads import init_roli
from roli.transfer.lora import LoraConfig, LoRAQKV, merge_lora
from roli.transfer.prompt import PromptConfig, PromptedBlock, ShallowPromptConfig

C = 4
METHODS = ["lora", "adapter", "vpt_deep", "vpt_shallow", "bitfit"]
ON_SWIN = ["lora", "adapter", "bitfit"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def vit(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return create_backbone("vit_tiny_28", num_classes=C)


def swin(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = SwinTransformer(img_size=32, patch_size=4, in_chans=3, window_size=4, embed_dim=16, depths=(1, 1),
                          num_heads=(1, 2), num_classes=C)
    return Classifier(net, PixelNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), in_chans=3))


BUILD = {"vit": (vit, (1, 28, 28)), "swin": (swin, (3, 32, 32))}


def transfer(name: str, **fields) -> TransferConfig:
    return from_dict(TransferConfig, {"name": name, **fields}, "transfer")


def apply(model, name: str, **fields):
    return build_transfer(transfer(name, **fields)).apply(model)


def batch(backbone: str, n: int = 6):
    return torch.rand(n, *BUILD[backbone][1]), torch.arange(n) % C


def train(model, backbone: str, steps: int = 3, lr: float = 1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    set_train_mode(model, True)
    for _ in range(steps):
        x, y = batch(backbone)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def trainable(model) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def n_head(model) -> int:
    return sum(p.numel() for p in model.head.parameters())


def n_trainable(model) -> int:
    return sum(p.numel() for p in trainable(model).values())


# ---------------------------------------------------------------------------------------------- configs


def test_configs_resolve_to_their_classes_with_reference_defaults():
    lora = transfer("lora")
    assert type(lora) is LoraConfig
    assert (lora.rank, lora.alpha, lora.dropout, lora.targets) == (16, 16.0, 0.1, None)  # None: [q, v] on a ViT
    assert type(transfer("adapter")) is AdapterConfig and transfer("adapter").reduction == 8
    assert transfer("adapter").adapter_init == "standard"
    assert type(transfer("vpt_deep")) is PromptConfig and type(transfer("vpt_shallow")) is ShallowPromptConfig
    assert transfer("vpt_deep").num_tokens == 10 and transfer("vpt_shallow").dropout == 0.1
    assert type(transfer("bitfit")) is BitFitConfig and not transfer("bitfit").include_rel_pos_bias
    assert transfer("lora", targets=["q", "k", "v"], init="roli").targets == ("q", "k", "v")


@pytest.mark.parametrize("name, fields", [
    ("lora", {"rank": 0}), ("lora", {"alpha": 0}), ("lora", {"dropout": 1.0}), ("lora", {"targets": []}),
    ("lora", {"targets": ["q", "q"]}), ("lora", {"targets": ["o"]}), ("lora", {"targets": ["qkv", "v"]}),
    ("lora", {"targets": ["mlp", "fc2"]}), ("adapter", {"reduction": 0}),
    ("adapter", {"adapter_init": "xavier"}), ("vpt_deep", {"num_tokens": 0}), ("vpt_shallow", {"dropout": -0.1}),
    ("bitfit", {"include_rel_pos_bias": "yes"}), ("bitfit", {"rank": 4}),
])
def test_bad_config_values_are_rejected(name, fields):
    with pytest.raises(ConfigError):
        transfer(name, **fields)


# ------------------------------------------------------------------------ trainable sets and one update


def _expected_count(name: str, model, backbone: str) -> int:
    """Backbone parameters the method trains, from the architecture's sizes (not from the method's code)."""
    net = model.net
    if backbone == "vit":
        dims, t, depth = [net.embed_dim] * len(net.blocks), 10, len(net.blocks)
    else:
        dims = [blk.norm1.normalized_shape[0] for layer in net.layers for blk in layer.blocks]
    if name == "lora":
        return sum(2 * 16 * (d + d) for d in dims)  # q and v: A (16 x d) + B (d x 16)
    if name == "adapter":
        return sum(2 * d * (d // 8) + d // 8 + d for d in dims)
    if name == "vpt_deep":
        return depth * t * net.embed_dim
    if name == "vpt_shallow":
        return t * net.embed_dim
    layers = (nn.Linear, nn.Conv2d, nn.LayerNorm)
    biases = [m.bias for m in net.modules() if isinstance(m, layers) and m.bias is not None]
    return sum(b.numel() for b in biases) - model.head.bias.numel()


def _declared(name: str, param_name: str) -> bool:
    if param_name.startswith("net.head."):
        return True
    return {"lora": ".qkv.lora_", "adapter": ".mlp.adapter.", "vpt_deep": ".prompt",
            "vpt_shallow": "blocks.0.prompt", "bitfit": ".bias"}[name] in param_name and (
        name != "bitfit" or param_name.endswith(".bias"))


CASES = [(n, "vit") for n in METHODS] + [(n, "swin") for n in ON_SWIN]


@pytest.mark.parametrize("name, backbone", CASES)
def test_only_declared_parameters_train_and_frozen_ones_do_not_move(name, backbone):
    model = apply(BUILD[backbone][0](), name)
    params = trainable(model)
    assert all(_declared(name, n) for n in params), sorted(n for n in params if not _declared(name, n))
    assert {id(p) for p in model.head.parameters()} <= {id(p) for p in params.values()}
    assert n_trainable(model) - n_head(model) == _expected_count(name, model, backbone)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, backbone, steps=2)
    for n, p in model.named_parameters():
        if n in params:
            assert p.grad is not None, n
        else:
            assert p.grad is None and torch.equal(p, before[n]), f"frozen {n} changed"
    moved = {n for n in params if not torch.equal(params[n], before[n])}
    assert moved == set(params)  # Adam moves every trainable parameter that got a non-zero gradient


def test_reference_sized_parameter_counts():
    """Spec §5: LoRA on ViT-B 589,824 and Swin-B 770,048 trainable parameters (plus the head)."""
    counts = {}
    for arch in ("vit_base_patch16_224", "swin_base_patch4_window7_224"):
        for name in (["lora", "adapter", "vpt_deep"] if arch.startswith("vit") else ["lora", "adapter"]):
            model = Classifier(timm.create_model(arch, pretrained=False, num_classes=10),
                               PixelNormalize((0.5,) * 3, (0.5,) * 3))
            model = apply(model, name)
            counts[arch, name] = n_trainable(model) - n_head(model)
            del model
    assert counts["vit_base_patch16_224", "lora"] == 589_824
    assert counts["swin_base_patch4_window7_224", "lora"] == 770_048
    assert counts["vit_base_patch16_224", "adapter"] == 12 * (2 * 768 * 96 + 96 + 768)
    assert counts["swin_base_patch4_window7_224", "adapter"] == sum(
        n * (2 * d * (d // 8) + d // 8 + d) for n, d in [(2, 128), (2, 256), (18, 512), (2, 1024)])
    assert counts["vit_base_patch16_224", "vpt_deep"] == 12 * 10 * 768


# ------------------------------------------------------------------------------------ function at init


@pytest.mark.parametrize("backbone", ["vit", "swin"])
@pytest.mark.parametrize("name, fields", [("lora", {}), ("lora", {"targets": ["q", "k", "v"]}),
                                          ("adapter", {}), ("adapter", {"adapter_init": "zero"})])
def test_lora_and_adapter_leave_the_model_unchanged_at_init(name, fields, backbone):
    model = BUILD[backbone][0]().eval()
    x, _ = batch(backbone)
    with torch.no_grad():
        ref = model(x)
        out = apply(model, name, **fields).eval()(x)
    assert torch.allclose(out, ref, atol=1e-6)


def test_zero_adapter_init_reproduces_the_degenerate_reference_adapter():
    """Spec B2: with all-zero down and up, only up.bias ever moves."""
    model = train(apply(vit(), "adapter", adapter_init="zero"), "vit", steps=3)
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    assert len(adapters) == 4
    for a in adapters:
        assert not a.down.weight.any() and not a.down.bias.any() and not a.up.weight.any()
    assert any(a.up.bias.any() for a in adapters)
    standard = train(apply(vit(), "adapter"), "vit", steps=3)
    assert all(a.down.weight.any() and a.up.weight.any() for a in standard.modules() if isinstance(a, Adapter))


# -------------------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("backbone", ["vit", "swin"])
def test_lora_changes_q_and_v_but_leaves_k_exactly_untouched(backbone):
    model = apply(BUILD[backbone][0](), "lora")
    wrappers = [m for m in model.modules() if isinstance(m, LoRAQKV)]
    assert wrappers and all(isinstance(w.base_layer, nn.Linear) for w in wrappers)
    assert all(sorted(w.lora_A) == ["q", "v"] for w in wrappers)
    train(model, backbone, steps=3)
    w = wrappers[0]
    h = torch.randn(5, 7, w.base_layer.in_features)
    with torch.no_grad():
        q, k, v = w(h).split(w.slice_dim, dim=-1)
        q0, k0, v0 = w.base_layer(h).split(w.slice_dim, dim=-1)
    assert torch.equal(k, k0)
    assert not torch.allclose(q, q0) and not torch.allclose(v, v0)


@pytest.mark.parametrize("backbone", ["vit", "swin"])
def test_merged_lora_equals_unmerged(backbone):
    model = train(apply(BUILD[backbone][0](), "lora"), backbone, steps=3)
    merged = merge_lora(copy.deepcopy(model))
    assert not any(isinstance(m, LoRAQKV) for m in merged.modules())
    assert all(isinstance(m.qkv, nn.Linear) for m in merged.modules() if hasattr(m, "qkv"))
    assert set(merged.state_dict()) == set(BUILD[backbone][0]().state_dict())  # the plain timm keys again
    x, _ = batch(backbone)
    with torch.no_grad():
        assert torch.allclose(merged(x), model(x), atol=1e-5)
        w = next(m for m in model.modules() if isinstance(m, LoRAQKV))
        h = torch.randn(3, 5, w.base_layer.in_features)
        assert torch.allclose(w.merge()(h), w(h), atol=1e-5)


# --------------------------------------------------------------------------------------------------- VPT


def _block_inputs(model, x):
    seen = []
    hooks = [m.base_layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
             for m in model.net.blocks if isinstance(m, PromptedBlock)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["vpt_deep", "vpt_shallow"])
@pytest.mark.parametrize("vit_kwargs", [{}, {"global_pool": "avg", "reg_tokens": 2}], ids=["token", "avg+reg"])
def test_vpt_places_prompts_after_prefix_tokens_and_removes_them(name, vit_kwargs):
    torch.manual_seed(0)
    net = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=C, embed_dim=32, depth=3,
                            num_heads=2, **vit_kwargs)
    model = Classifier(net, PixelNormalize((0.5,), (0.5,), in_chans=1)).eval()
    x, _ = batch("vit")
    with torch.no_grad():
        feats0 = net.forward_features(model.normalize(x)).shape
    apply(model, name).eval()
    n, t = net.num_prefix_tokens, 10
    with torch.no_grad():
        assert net.forward_features(model.normalize(x)).shape == feats0  # 16 patches + prefix, prompts removed
        assert model(x).shape == (6, C)
    inputs = _block_inputs(model, x)
    prompts = [m.prompt for m in net.blocks if isinstance(m, PromptedBlock) and m.prompt is not None]
    assert len(prompts) == (3 if name == "vpt_deep" else 1)
    for inp, p in zip(inputs, prompts):
        assert inp.shape[1] == n + t + 16
        assert torch.equal(inp[:, n:n + t], p.expand(6, -1, -1))  # eval mode: no prompt dropout


@pytest.mark.parametrize("name", ["vpt_deep", "vpt_shallow"])
def test_vpt_trains_and_changes_the_output(name):
    model = apply(vit(), name).eval()
    x, _ = batch("vit")
    with torch.no_grad():
        before = model(x)
    train(model, "vit", steps=3)
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape == (6, C)
    assert not torch.allclose(after, before)


# ------------------------------------------------------------------------------------------------ BitFit


def test_bitfit_relative_position_table_only_by_option():
    default = trainable(apply(swin(), "bitfit"))
    assert default and all(n.endswith(".bias") for n in default if not n.startswith("net.head."))
    assert not any("relative_position_bias_table" in n for n in default)
    with_tables = trainable(apply(swin(), "bitfit", include_rel_pos_bias=True))
    tables = set(with_tables) - set(default)
    assert len(tables) == 2 and all(n.endswith("attn.relative_position_bias_table") for n in tables)


def test_bitfit_on_a_resnet_trains_batchnorm_biases_and_the_fc_head():
    torch.manual_seed(0)
    model = apply(create_backbone("test_resnet", num_classes=C), "bitfit")
    bn = [m for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)]
    expected = {id(m.bias) for m in bn} | {id(p) for p in model.head.parameters()}
    assert set(map(id, trainable(model).values())) == expected
    set_train_mode(model, True)
    F.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.arange(4)).backward()


# ------------------------------------------------------------------------------------ unsupported backbones


@pytest.mark.parametrize("name, needs", [("adapter", "MLP blocks"), ("vpt_deep", "VisionTransformer"),
                                         ("vpt_shallow", "SwinTransformer")])
def test_methods_refuse_a_resnet_naming_what_they_need_and_what_applies(name, needs):
    model = create_backbone("test_resnet", num_classes=C)
    with pytest.raises(UnsupportedBackbone, match=f"{name} supports backbones with") as e:
        apply(model, name)
    assert needs in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).endswith("ResNet has none. Methods that apply to ResNet: bitfit, full_finetune, linear_probe, "
                                 "lora")
    assert all(p.requires_grad for p in model.parameters())  # refused before anything was frozen


# --------------------------------------------------------------------------- state dicts and RoLI heads


@pytest.mark.parametrize("name, backbone", CASES)
def test_state_dict_round_trips_into_a_freshly_built_model(name, backbone):
    model = train(apply(BUILD[backbone][0](seed=0), name), backbone, steps=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = apply(BUILD[backbone][0](seed=1), name).eval()
    x, _ = batch(backbone)
    with torch.no_grad():
        expected = model(x)
        assert not torch.allclose(fresh(x), expected)
        fresh.load_state_dict(state, strict=True)
        assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("name", METHODS)
def test_a_roli_head_loads_into_a_peft_model(name):
    stage1 = train(apply(vit(seed=3), "linear_probe"), "vit", steps=2)
    head = {k: v.clone() for k, v in stage1.head.state_dict().items()}
    model = vit()
    init_roli(model, head)  # the pipeline's order: head first, then the method
    apply(model, name)
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head.items())
    assert all(p.requires_grad for p in model.head.parameters())
    other = apply(vit(), name)  # and into an already adapted model
    init_roli(other, head)
    assert all(torch.equal(other.head.state_dict()[k], v) for k, v in head.items())
