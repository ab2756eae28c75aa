"""Head initialisation: RanLI (random head, zero or focal bias) and RoLI (the stage-1 head, checked strictly)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from roli.backbones import build_model
from roli.checkpoints import atomic_save
from roli.config import BackboneConfig, TransferConfig, load_config
from roli.errors import CheckpointError
from roli.training.trainer import model_checkpoint
from roli.transfer.heads import HeadError, head_state, init_ranli, init_roli

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(num_classes: int = 4, name: str = "vit_tiny_28", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(BackboneConfig(name=name), num_classes)


def test_init_ranli_zero_bias_and_fresh_weights():
    model = _model()
    with torch.no_grad():
        model.head.weight.fill_(0.5)
        model.head.bias.fill_(3.0)
    init_ranli(model, TransferConfig(head_init="torch"))
    assert torch.equal(model.head.bias, torch.zeros(4))
    w = model.head.weight
    assert not torch.equal(w, torch.full_like(w, 0.5))  # re-initialised
    bound = 1 / math.sqrt(w.shape[1])  # nn.Linear's default init range
    assert w.abs().max() <= bound and w.std() > 0


@pytest.mark.parametrize("head_init, std, bias", [
    ("paper", math.sqrt(2 / 10), -math.log(99)),  # kaiming_normal_(fan_out): std sqrt(2 / C); bias -log(99)
    ("torch", 1 / math.sqrt(3 * 768), 0.0),  # nn.Linear: uniform(+-1/sqrt(D)), std 1/sqrt(3 D); zero bias
])
def test_ranli_head_statistics_for_vit_b_features(head_init, std, bias):
    """C = 10 classes on D = 768 features (ViT-B): the paper's head is ~21x larger than PyTorch's default."""
    torch.manual_seed(0)
    model = SimpleNamespace(head=nn.Linear(768, 10))
    init_ranli(model, TransferConfig(head_init=head_init))
    w = model.head.weight
    assert w.mean().abs() < 0.1 * std
    assert w.std().item() == pytest.approx(std, rel=0.05)  # 7,680 draws: the sample std is within ~2%
    assert torch.equal(model.head.bias, torch.full((10,), bias, dtype=torch.float32))
    if head_init == "paper":  # normal, not uniform: some weights beyond 2 std
        assert (w.abs() > 2 * std).float().mean().item() == pytest.approx(0.0455, abs=0.015)
    else:
        assert w.abs().max() <= 1 / math.sqrt(768)


def test_paper_recipes_use_the_paper_head_and_the_demo_torchs():
    from roli.config import load_config

    assert load_config("recipes/paper/swin_b/full_finetune_cifar10_ranli.yaml").transfer.head_init == "paper"
    assert load_config("recipes/paper/vit_b/linear_probe_cub200_ranli.yaml").transfer.head_init == "paper"
    assert load_config("recipes/tiny/mnist_full_ranli.yaml").transfer.head_init == "torch"


def test_init_ranli_needs_a_linear_head():
    model = _model(num_classes=0)  # timm: num_classes=0 -> Identity head
    with pytest.raises(HeadError, match="linear head"):
        init_ranli(model, TransferConfig())


def test_init_roli_copies_the_weights():
    src, dst = _model(seed=1), _model(seed=2)
    state = {k: v.clone() for k, v in src.head.state_dict().items()}
    assert not torch.equal(dst.head.weight, state["weight"])
    init_roli(dst, state)
    assert torch.equal(dst.head.weight, state["weight"]) and torch.equal(dst.head.bias, state["bias"])
    state["weight"].add_(1.0)  # a copy, not an alias of the source tensors
    assert not torch.equal(dst.head.weight, state["weight"])
    assert torch.equal(dst.head.weight, src.head.weight)


def test_init_roli_class_count_mismatch_names_the_shapes():
    ten, four = _model(num_classes=10, seed=1), _model(num_classes=4, seed=2)
    before = four.head.weight.clone()
    with pytest.raises(HeadError, match="shape") as e:
        init_roli(four, ten.head.state_dict(), source="s1/best.pt")
    msg = str(e.value)
    assert "(10, 128)" in msg and "(4, 128)" in msg and "s1/best.pt" in msg and "classes" in msg
    assert torch.equal(four.head.weight, before)  # nothing half-loaded


def test_init_roli_key_mismatch():
    model = _model()
    with pytest.raises(HeadError, match="keys"):
        init_roli(model, {"weight": model.head.weight.detach().clone()})


def test_head_state_reads_a_roli_checkpoint(tmp_path):
    cfg = load_config(data={"backbone": {"name": "test_resnet"}, "data": {"name": "synthetic"}})
    model = _model(name="test_resnet")
    path = tmp_path / "best.pt"
    atomic_save(model_checkpoint(model, cfg, {"epoch": 1}), path)
    state = head_state(str(path))
    assert set(state) == {"weight", "bias"}  # the timm ResNet's classifier is `fc`
    assert torch.equal(state["weight"], model.net.fc.weight) and torch.equal(state["bias"], model.net.fc.bias)


def test_head_state_refuses_a_non_roli_file(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(_model().state_dict(), path)
    with pytest.raises(HeadError, match="not a roli checkpoint"):
        head_state(str(path))


def test_head_state_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        head_state(str(tmp_path / "missing.pt"))
