"""The contract every transfer method keeps on every backbone family it adapts: exactly the declared parameters
train, frozen ones never move, frozen BatchNorm keeps its statistics, and a saved state dict rebuilds the same model;
on a family it cannot adapt, a clear UnsupportedBackbone before the model is touched.

The methods are the TRANSFER registry's entries and the families `tiny_models.FAMILIES` (ViT, ResNet, ConvNeXt,
Swin, XCiT): a newly registered method is crossed with every family automatically, once it states its expectations below.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from roli.config import TrainConfig, TransferConfig
from roli.training.optim import build_optimizer
from roli.transfer import TRANSFER, build_transfer
from roli.transfer.base import UnsupportedBackbone, set_train_mode
from tiny_models import FAMILIES, tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 4
METHODS = TRANSFER.names()


def _head_names(model) -> set[str]:
    prefix = f"net.{model.head_name}."
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def _names(model, keep) -> set[str]:
    return {n for n, _ in model.named_parameters() if keep(n)} | _head_names(model)


# What each registered method declares trainable (besides the head, which always trains), written from the
# method's documentation, not from its code. A new method must add its expectation here.
EXPECTED_TRAINABLE = {
    "linear_probe": lambda m: _head_names(m),
    "full_finetune": lambda m: {n for n, _ in m.named_parameters()},
    # every layer bias; in all five families every parameter named *.bias is one (Swin's
    # relative_position_bias_table is not, and stays frozen by default)
    "bitfit": lambda m: _names(m, lambda n: n.endswith(".bias")),
    "adapter": lambda m: _names(m, lambda n: ".adapter.down." in n or ".adapter.up." in n),
    # the A/B matrices: `qkv.lora_A.q` (fused q/v slices) or `<layer>.lora_A` (a whole Linear or 1x1 conv)
    "lora": lambda m: _names(m, lambda n: ".lora_A" in n or ".lora_B" in n),
    "vpt_deep": lambda m: _names(m, lambda n: n.endswith(".prompt")),
    "vpt_shallow": lambda m: _names(m, lambda n: n.endswith(".prompt")),
}
# The families each method refuses by design (UnsupportedBackbone), from the methods' docstrings: VPT needs a ViT or
# Swin token sequence (XCiT is refused: its tokens are reshaped to the patch grid), the adapter MLP blocks (ConvNeXt
# blocks have one, ResNet blocks do not); LoRA adapts every family (q/v, ConvNeXt's MLPs, ResNet's 1x1 convs). A
# method missing here must adapt every family. test_refusals_are_the_methods_own_check holds this table to each
# method's `check`.
REFUSES = {"adapter": {"resnet"}, "vpt_deep": {"resnet", "convnext", "xcit"},
           "vpt_shallow": {"resnet", "convnext", "xcit"}}
REFUSED = [(n, b) for n in METHODS for b in FAMILIES if b in REFUSES.get(n, ())]
# Every (method, family) pair; the refused ones are skipped here and checked by test_unsupported_backbone_is_refused.
CASES = [pytest.param(n, b, marks=pytest.mark.skip(reason=f"{n} refuses {b} by design (UnsupportedBackbone: "
                                                          "test_unsupported_backbone_is_refused)"))
         if (n, b) in REFUSED else (n, b) for n in METHODS for b in FAMILIES]
# The head each family's timm architecture names in its pretrained_cfg (the Classifier's `head_name`).
HEADS = {"vit": "net.head", "resnet": "net.fc", "convnext": "net.head.fc", "swin": "net.head.fc", "xcit": "net.head"}


def _build(name: str, backbone: str, seed: int = 0):
    model = tiny_backbone(backbone, NUM_CLASSES, seed)
    cfg = TRANSFER.get(name).config_cls(name=name)
    return build_transfer(cfg).apply(model)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_every_method_has_an_expectation():
    assert set(TRANSFER.names()) == set(EXPECTED_TRAINABLE), "add the new method to EXPECTED_TRAINABLE"


@pytest.mark.parametrize("name, backbone", CASES)
def test_only_declared_parameters_train(name, backbone):
    model = _build(name, backbone)
    expected = EXPECTED_TRAINABLE[name](model)
    assert _trainable(model) == expected
    assert _head_names(model) <= expected  # the head trains in every method
    if name != "full_finetune":
        assert len(expected) < len(dict(model.named_parameters())), "a PEFT method must freeze something"
    assert model.method == name


def test_every_refusal_names_a_registered_method_and_family():
    assert set(REFUSES) <= set(METHODS) and set().union(*REFUSES.values()) <= set(FAMILIES)


@pytest.mark.parametrize("backbone", FAMILIES)
@pytest.mark.parametrize("name", METHODS)
def test_refusals_are_the_methods_own_check(name, backbone):
    """The method's declared capability (`check`) agrees with REFUSES both ways: no family is refused silently
    (nor adapted by accident)."""
    method = build_transfer(TRANSFER.get(name).config_cls(name=name))
    net = tiny_backbone(backbone, NUM_CLASSES).net
    if backbone in REFUSES.get(name, ()):
        with pytest.raises(UnsupportedBackbone):
            method.check(net)
    else:
        method.check(net)


@pytest.mark.parametrize("name, backbone", REFUSED)
def test_unsupported_backbone_is_refused(name, backbone):
    model = tiny_backbone(backbone, NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = len(list(model.modules()))
    with pytest.raises(UnsupportedBackbone, match=name) as info:
        build_transfer(TRANSFER.get(name).config_cls(name=name)).apply(model)
    assert "supports" in str(info.value) or "expected" in str(info.value)  # says what it needs
    # refused before touching the model: nothing frozen, nothing injected
    assert all(p.requires_grad for p in model.parameters())
    assert model.state_dict().keys() == before.keys() and len(list(model.modules())) == modules
    assert model.method is None and model.injected == []


@pytest.mark.parametrize("backbone, blocks", [("vit", 4), ("swin", 4)])  # vit_tiny_28: depth 4; Swin: 2 + 2
def test_vpt_prompt_counts(backbone, blocks):
    deep, shallow = _build("vpt_deep", backbone), _build("vpt_shallow", backbone)
    assert len([n for n in _trainable(deep) if n.endswith(".prompt")]) == blocks  # one per block
    assert len([n for n in _trainable(shallow) if n.endswith(".prompt")]) == 1


@pytest.mark.parametrize("backbone", FAMILIES)
def test_linear_probe_trains_exactly_the_head(backbone):
    model = _build("linear_probe", backbone)
    assert _trainable(model) == {f"{HEADS[backbone]}.weight", f"{HEADS[backbone]}.bias"}


def test_apply_refreezes_a_model_that_was_fully_trainable():
    """apply() starts from 'everything frozen': parameters trainable before it do not stay trainable."""
    model = tiny_backbone("vit", NUM_CLASSES)
    assert all(p.requires_grad for p in model.parameters())
    build_transfer(TransferConfig(name="linear_probe")).apply(model)
    assert _trainable(model) == {"net.head.weight", "net.head.bias"}


@pytest.mark.parametrize("name, backbone", CASES)
def test_one_step_moves_only_trainable_parameters(name, backbone):
    model = _build(name, backbone)
    trainable = _trainable(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Weight decay and momentum on: a frozen parameter in an optimiser group would move even without a gradient.
    opt = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.1, momentum=0.9))
    set_train_mode(model, True)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % NUM_CLASSES
    logits = model(x)
    assert logits.shape == (8, NUM_CLASSES)
    F.cross_entropy(logits, y).backward()
    for n, p in model.named_parameters():
        if n in trainable:
            assert p.grad is not None, f"{n} is trainable but got no gradient"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    opt.step()
    after = model.state_dict()
    params = dict(model.named_parameters())
    changed = [n for n in trainable if not torch.equal(before[n], after[n])]
    assert changed, "no trainable parameter changed after an optimiser step"
    for n in params:
        if n not in trainable:
            assert torch.equal(before[n], after[n]), f"frozen parameter {n} changed"
    if name == "linear_probe":  # a frozen backbone stays frozen entirely: BatchNorm running stats included
        for k in after:
            if not k.startswith(f"net.{model.head_name}."):
                assert torch.equal(before[k], after[k]), f"frozen state {k} changed"


@pytest.mark.parametrize("name, backbone", CASES)
def test_state_dict_round_trips_into_a_fresh_model(name, backbone):
    model = _build(name, backbone, seed=0)
    # Train one step so the weights differ from any fresh initialisation.
    opt = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0))
    set_train_mode(model, True)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % NUM_CLASSES
    F.cross_entropy(model(x), y).backward()
    opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    fresh = _build(name, backbone, seed=123)
    model.eval(), fresh.eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        assert not torch.equal(fresh(x), expected)  # otherwise the round trip below proves nothing
        result = fresh.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(fresh(x), expected)
        assert fresh(x).shape == (5, NUM_CLASSES)
    assert _trainable(fresh) == _trainable(model)


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name", [n for n in METHODS if "resnet" not in REFUSES.get(n, ())])
def test_set_train_mode_keeps_frozen_batchnorm_in_eval(name):
    model = _build(name, "resnet")  # the one BatchNorm family
    bns = _batchnorms(model)
    assert bns, "test_resnet should contain BatchNorm"
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    set_train_mode(model, True)
    assert model.training and model.net.get_classifier().training
    for m in bns:
        frozen = not any(p.requires_grad for p in m.parameters())
        assert m.training is not frozen
    with torch.no_grad():
        model(torch.rand(4, 1, 28, 28))
    now = model.state_dict()
    for k, v in stats.items():
        module = model.get_submodule(k.rsplit(".", 1)[0])
        if not any(p.requires_grad for p in module.parameters()):
            assert torch.equal(now[k], v), f"frozen BatchNorm statistic {k} changed in train mode"
    if name == "linear_probe":
        assert all(not m.training for m in bns)
    if name == "full_finetune":
        assert all(m.training for m in bns)
        assert any(not torch.equal(now[k], v) for k, v in stats.items())  # trainable BN does update
    set_train_mode(model, False)
    assert not any(m.training for m in model.modules())


def test_set_train_mode_on_a_custom_module():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    for p in net[1].parameters():
        p.requires_grad_(False)
    net.eval()
    set_train_mode(net, True)
    assert net.training and net[0].training and net[2].training
    assert not net[1].training  # frozen
    assert net[3].training  # trainable
    running = net[1].running_mean.clone()
    net(torch.rand(2, 1, 6, 6))
    assert torch.equal(net[1].running_mean, running)
    assert not torch.equal(net[3].running_mean, torch.zeros(2))
