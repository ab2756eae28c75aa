"""Optimiser and schedule: every constant from TrainConfig; warmup never at LR 0; the no-decay policies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from roli.backbones import build_model
from roli.config import BackboneConfig, TrainConfig, TransferConfig
from roli.training.optim import build_optimizer, build_scheduler, lr_multiplier
from roli.transfer import build_transfer

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- schedule


def _curve(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The LR used by each optimiser step, as the training loop sees it (scheduler stepped after each step)."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_starts_above_zero_and_reaches_the_peak():
    cfg = TrainConfig(epochs=4, lr=0.2, warmup_epochs=1.0)
    lrs = _curve(cfg, steps_per_epoch=5)
    warmup = 5
    assert lrs[0] > 0
    assert lrs[0] == pytest.approx(0.2 / warmup)  # lr / warmup_steps
    assert all(b > a for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))  # strictly increasing warmup
    assert lrs[warmup - 1] == pytest.approx(0.2)  # peak at the last warmup step
    assert lrs[warmup] == pytest.approx(0.2)  # cosine starts at the peak
    assert max(lrs) == pytest.approx(0.2)
    assert min(lrs) > 0  # no step at LR 0 (min_lr_ratio 0: the value 0 is only reached after the last step)


def test_no_epoch_at_lr_zero_with_fractional_warmup():
    cfg = TrainConfig(epochs=2, lr=1.0, warmup_epochs=0.5)
    lrs = _curve(cfg, steps_per_epoch=4)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    for epoch in range(2):
        assert all(lr > 0 for lr in lrs[epoch * 4:(epoch + 1) * 4])


def test_cosine_decreases_after_warmup_to_min_lr_ratio():
    cfg = TrainConfig(epochs=5, lr=0.1, warmup_epochs=1.0, min_lr_ratio=0.1)
    total, warmup = 50, 10
    mult = [lr_multiplier(s, total, warmup, cfg) for s in range(total + 1)]
    after = mult[warmup:]
    assert all(b < a for a, b in zip(after, after[1:]))  # strictly decreasing
    assert all(m >= 0.1 for m in mult)
    assert mult[total] == pytest.approx(0.1)  # min_lr_ratio, never below
    mid = warmup + (total - warmup) // 2
    assert mult[mid] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cosine midpoint
    lrs = _curve(cfg, steps_per_epoch=10)
    assert min(lrs) >= 0.1 * 0.1 - 1e-12 and lrs[-1] > 0.01


def test_no_warmup_starts_at_peak():
    cfg = TrainConfig(epochs=2, lr=0.3, warmup_epochs=0.0)
    assert lr_multiplier(0, 10, 0, cfg) == 1.0
    assert _curve(cfg, 3)[0] == pytest.approx(0.3)


def test_constant_schedule():
    cfg = TrainConfig(epochs=3, lr=0.1, warmup_epochs=1.0, schedule="constant")
    lrs = _curve(cfg, steps_per_epoch=2)
    assert lrs[:2] == pytest.approx([0.05, 0.1])
    assert lrs[2:] == pytest.approx([0.1] * 4)


# --------------------------------------------------------------------------- optimiser


def _vit(transfer: str = "full_finetune"):
    torch.manual_seed(0)
    model = build_model(BackboneConfig(name="vit_tiny_28"), 4)
    return build_transfer(TransferConfig(name=transfer)).apply(model)


def _groups(opt) -> tuple[set[int], set[int], dict]:
    """(ids in the decaying group, ids in the weight-decay-0 group, the decaying group)."""
    decay = [g for g in opt.param_groups if g["weight_decay"] > 0]
    zero = [g for g in opt.param_groups if g["weight_decay"] == 0]
    assert len(decay) <= 1 and len(zero) <= 1
    return ({id(p) for g in decay for p in g["params"]}, {id(p) for g in zero for p in g["params"]},
            decay[0] if decay else None)


def _expected_no_decay(model, policy: str) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    if policy == "none":
        return set()
    if policy == "bias":
        return {n for n in names if n.endswith(".bias")}
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    return ({n for n in names if n.endswith(".bias") or n.rsplit(".", 1)[0] in norms}
            | {"net.pos_embed", "net.cls_token"})


@pytest.mark.parametrize("policy", ["bias_norm", "bias", "none"])
def test_no_decay_policies(policy):
    model = _vit()
    cfg = TrainConfig(no_decay=policy, weight_decay=0.0371)
    opt = build_optimizer(model, cfg)
    decay_ids, zero_ids, decay_group = _groups(opt)
    by_id = {id(p): n for n, p in model.named_parameters()}
    no_decay = {by_id[i] for i in zero_ids}
    assert no_decay == _expected_no_decay(model, policy)
    assert {by_id[i] for i in decay_ids} == set(by_id.values()) - no_decay  # everything else decays
    assert decay_group["weight_decay"] == 0.0371  # the configured value, no hidden constant
    if policy == "bias_norm":
        assert {"net.pos_embed", "net.cls_token", "net.norm.weight", "net.blocks.0.norm1.weight",
                "net.head.bias"} <= no_decay
        assert "net.head.weight" not in no_decay and "net.blocks.0.attn.qkv.weight" not in no_decay
    if policy == "bias":
        assert "net.pos_embed" not in no_decay and "net.norm.weight" not in no_decay
    if policy == "none":
        assert len(opt.param_groups) == 1


def test_bias_norm_covers_batchnorm():
    torch.manual_seed(0)
    model = build_transfer(TransferConfig(name="full_finetune")).apply(build_model(BackboneConfig(name="test_resnet"), 4))
    opt = build_optimizer(model, TrainConfig(no_decay="bias_norm", weight_decay=0.05))
    _, zero_ids, _ = _groups(opt)
    by_id = {id(p): n for n, p in model.named_parameters()}
    bn_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn_weights and bn_weights <= {by_id[i] for i in zero_ids}


def test_only_trainable_parameters_are_optimised():
    model = _vit("linear_probe")
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(model.head.weight), id(model.head.bias)}


def test_nothing_trainable_is_an_error():
    model = _vit()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        build_optimizer(model, TrainConfig())


def test_adamw_settings_come_from_the_config():
    cfg = TrainConfig(optimizer="adamw", lr=0.0123, weight_decay=0.0456, betas=(0.8, 0.95), adam_eps=1e-6)
    opt = build_optimizer(_vit(), cfg)
    assert type(opt) is torch.optim.AdamW
    for g in opt.param_groups:
        assert g["lr"] == 0.0123 and g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6
        assert g["weight_decay"] in (0.0456, 0.0)


def test_sgd_settings_come_from_the_config():
    cfg = TrainConfig(optimizer="sgd", lr=0.07, weight_decay=0.0, momentum=0.5)
    opt = build_optimizer(_vit(), cfg)
    assert type(opt) is torch.optim.SGD
    for g in opt.param_groups:
        assert g["lr"] == 0.07 and g["momentum"] == 0.5 and g["weight_decay"] == 0.0
        assert not g["nesterov"]


def test_zero_weight_decay_keeps_adamw():
    """The reference silently switched to SGD when weight decay was 0 (protocol B3)."""
    opt = build_optimizer(_vit(), TrainConfig(optimizer="adamw", weight_decay=0.0))
    assert type(opt) is torch.optim.AdamW
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)


def test_lr_multiplier_formula():
    cfg = TrainConfig(epochs=2, warmup_epochs=0.0, min_lr_ratio=0.0)
    assert lr_multiplier(5, 10, 0, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
