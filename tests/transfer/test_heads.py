"""Head initialisation: RanLI (random head, zero or focal bias) and RoLI (the stage-1 head, checked strictly)."""

from __future__ import annotations

import math

import pytest
import torch

from roli.backbones import build_model
from roli.backbones.checkpoints import CheckpointError, atomic_save
from roli.config import BackboneConfig, TransferConfig, load_config
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
    init_ranli(model, TransferConfig(head_bias="zero"))
    assert torch.equal(model.head.bias, torch.zeros(4))
    w = model.head.weight
    assert not torch.equal(w, torch.full_like(w, 0.5))  # re-initialised
    bound = 1 / math.sqrt(w.shape[1])  # nn.Linear's default init range
    assert w.abs().max() <= bound and w.std() > 0


def test_init_ranli_focal_bias_is_minus_log_99():
    model = _model()
    init_ranli(model, TransferConfig(head_bias="focal"))
    assert torch.equal(model.head.bias, torch.full((4,), -math.log(99), dtype=torch.float32))
    assert abs(model.head.bias[0].item() - (-4.59512)) < 1e-4


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
