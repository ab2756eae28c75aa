"""The PEFT capability matrix over every registered method x every tiny family (tests/tiny_models.FAMILIES): the
matrix `roli list` prints is what the methods do on real models; where a method applies, one adversarial step moves
only what it trains, merging keeps the logits, a saved file rebuilds the model; where it does not, the refusal is
one line naming the methods that do apply. (test_contract.py checks the declared trainable sets on the same grid.)
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from roli.attacks import make_attack
from roli.backbones.normalize import Classifier, PixelNormalize
from roli.checkpoints import load_file, save_new
from roli.transfer import TRANSFER, build_transfer
from roli.transfer.base import UnsupportedBackbone, set_train_mode
from roli.transfer.capabilities import applicable
from roli.transfer.lora import LORA_MODULES, merge_lora
from roli.transfer.matrix import FAMILIES as META_FAMILIES
from roli.transfer.matrix import capability_matrix, family_net, matrix_lines
from tiny_models import FAMILIES, tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

C = 4
METHODS = TRANSFER.names()
TINY = {f: tiny_backbone(f, C).net for f in FAMILIES}
MATRIX = capability_matrix(TINY)  # on the tiny models (random init, real tensors)
GRID = [(m, f) for m in METHODS for f in FAMILIES]
APPLIES = [(m, f) for m, f in GRID if MATRIX[m][f] is None]
REFUSED = [(m, f) for m, f in GRID if MATRIX[m][f] is not None]


def _build(method: str, family: str, seed: int = 0) -> Classifier:
    return build_transfer(TRANSFER.get(method).config_cls(name=method)).apply(tiny_backbone(family, C, seed))


def _batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % C


def _perturb(model: Classifier) -> None:
    """Give every injected parameter a non-trivial value (LoRA B and adapter up start at zero)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.injected:
            for p in m.parameters(recurse=False):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _unit_layer_scale(model: torch.nn.Module) -> None:
    """ConvNeXt's layer scale starts at 1e-6, which hides any change of its MLPs from the logits: set it to 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(1.0)


def test_the_printed_matrix_is_what_the_tiny_models_of_each_family_do():
    """`roli list` runs the checks on timm's full-size architectures on the meta device; the tiny random models of
    the same families give the same verdicts and reasons."""
    families = [f for f in FAMILIES if f in META_FAMILIES]
    assert families == list(FAMILIES)  # every tested family is printed
    meta = capability_matrix({f: family_net(f) for f in families})
    assert meta == MATRIX
    assert next(family_net("vit").parameters()).device.type == "meta"


def test_the_matrix_says_what_issue_24_asks():
    """ConvNeXt gets LoRA and adapters, ResNet gets LoRA (1x1 convs) and BitFit, VPT stays with token sequences."""
    ok = {f: {m for m in METHODS if MATRIX[m][f] is None} for f in FAMILIES}
    base = {"linear_probe", "full_finetune", "bitfit", "lora"}
    assert ok["convnext"] == base | {"adapter"}
    assert ok["resnet"] == base
    assert ok["xcit"] == base | {"adapter"}
    assert ok["vit"] == ok["swin"] == base | {"adapter", "vpt_deep", "vpt_shallow"}
    assert "patch grid" in MATRIX["vpt_deep"]["xcit"] and "MLP blocks" in MATRIX["adapter"]["resnet"]


def test_matrix_lines_mark_every_cell_and_explain_every_refusal():
    lines = matrix_lines(MATRIX)
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[2:2 + len(METHODS)]}
    assert list(rows) == METHODS and all(len(r) == len(FAMILIES) for r in rows.values())
    for m, f in GRID:
        assert rows[m][FAMILIES.index(f)] in (("✓", "y") if MATRIX[m][f] is None else ("✗", "-"))
    reasons = [ln for ln in lines if " on " in ln and ": needs " in ln]
    assert len(reasons) == len(REFUSED)


@pytest.mark.parametrize("method, family", REFUSED)
def test_a_refusal_is_one_line_naming_the_methods_that_apply(method, family):
    model = tiny_backbone(family, C)
    with pytest.raises(UnsupportedBackbone) as e:
        build_transfer(TRANSFER.get(method).config_cls(name=method)).apply(model)
    msg, name = str(e.value), type(model.net).__name__
    ok = [m for m in METHODS if MATRIX[m][family] is None]
    assert "\n" not in msg and msg.startswith(f"{method} supports backbones with")
    assert msg.endswith(f"Methods that apply to {name}: {', '.join(ok)}")
    assert applicable(model.net) == ok
    assert model.method is None and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method, family", APPLIES)
def test_one_adversarial_step_moves_only_the_trainable_parameters(method, family):
    model = _build(method, family)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9,
                          weight_decay=0.1)
    attack = make_attack(eps=8 / 255, step_size=4 / 255, steps=2)
    x, y = _batch()
    set_train_mode(model, True)
    x_adv = attack(model, x, y)
    assert model.training and not torch.equal(x_adv, x) and (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    F.cross_entropy(model(x_adv), y).backward()
    opt.step()
    after = model.state_dict()
    assert any(not torch.equal(before[n], after[n]) for n in trainable)
    for n, _ in model.named_parameters():
        if n not in trainable:
            assert torch.equal(before[n], after[n]), f"frozen {n} moved"
    frozen_bn = [k for k, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 and not any(p.requires_grad for p in m.parameters())]
    for k in frozen_bn:
        assert torch.equal(before[f"{k}.running_mean"], after[f"{k}.running_mean"]), f"frozen BN {k} updated"


@pytest.mark.parametrize("method, family", APPLIES)
def test_a_saved_file_rebuilds_the_same_model(method, family, tmp_path):
    model = _build(method, family, seed=0)
    _perturb(model)
    save_new({"model": model.state_dict()}, tmp_path / "m.pt")
    fresh = _build(method, family, seed=1).eval()
    x, _ = _batch(seed=1)
    with torch.no_grad():
        expected = model.eval()(x)
        assert not torch.allclose(fresh(x), expected)
        fresh.load_state_dict(load_file(tmp_path / "m.pt")["model"], strict=True)
        assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_lora_and_adapters_start_as_the_backbone_and_lora_merges(method, family):
    if MATRIX[method][family] is not None:
        pytest.skip(f"{method} refuses {family}")
    plain = tiny_backbone(family, C).eval()
    _unit_layer_scale(plain)
    model = copy.deepcopy(plain)
    build_transfer(TRANSFER.get(method).config_cls(name=method)).apply(model)
    x, _ = _batch()
    with torch.no_grad():
        ref = plain(x)
        assert torch.allclose(model.eval()(x), ref, atol=1e-6)  # zero-init B / up: the backbone's function
        _perturb(model)
        out = model(x)
        assert not torch.allclose(out, ref, atol=1e-4)
        if method == "lora":
            merged = merge_lora(copy.deepcopy(model))
            assert not any(isinstance(m, LORA_MODULES) for m in merged.modules())
            assert set(merged.state_dict()) == set(plain.state_dict())  # timm's own keys again
            assert torch.allclose(merged(x), out, atol=1e-5)


@pytest.mark.parametrize("conv_mlp", [False, True])
@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_convnext_with_and_without_conv_mlp(method, conv_mlp):
    """timm's ConvNeXtBlock: a channels-last Linear MLP, or (conv_mlp) a 1x1-conv MLP on (B, C, H, W)."""
    torch.manual_seed(0)
    net = timm.create_model("test_convnext", pretrained=False, conv_mlp=conv_mlp, num_classes=C)
    fc1 = type(net.stages[0].blocks[0].mlp.fc1)
    assert fc1 is (torch.nn.Conv2d if conv_mlp else torch.nn.Linear)
    model = Classifier(net, PixelNormalize((0.5,) * 3, (0.25,) * 3, input_size=32, in_chans=3)).eval()
    _unit_layer_scale(model)
    x, _ = _batch()
    with torch.no_grad():
        ref = model(x)
    build_transfer(TRANSFER.get(method).config_cls(name=method)).apply(model)
    blocks = len([b for s in net.stages for b in s.blocks])
    assert len(model.injected) >= blocks  # an adapter (or two LoRA layers) per block
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), ref, atol=1e-6)
        _perturb(model)
        out = model(x)
        assert not torch.allclose(out, ref, atol=1e-4)
        if method == "lora":
            assert torch.allclose(merge_lora(copy.deepcopy(model))(x), out, atol=1e-5)
