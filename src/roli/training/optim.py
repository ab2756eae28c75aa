"""Optimiser and per-step warmup + cosine schedule, every constant from TrainConfig (protocol B3, B5 fixed)."""

from __future__ import annotations

import math

import torch
from torch import nn

from roli.config import TrainConfig


def _no_decay_names(model: nn.Module, policy: str) -> set[str]:
    if policy == "none":
        return set()
    names = set()
    for mod_name, module in model.named_modules():
        skip_all = policy == "bias_norm" and isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)
        for p_name, _ in module.named_parameters(recurse=False):
            if p_name == "bias" or skip_all:
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
        if policy == "bias_norm" and hasattr(module, "no_weight_decay"):  # timm: pos_embed, cls_token, ...
            names |= {f"{mod_name}.{n}" if mod_name else n for n in module.no_weight_decay()}
    return names


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; those the `train.no_decay` policy picks get no weight decay."""
    skip = _no_decay_names(model, cfg.no_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no parameter requires grad: the transfer method left nothing to train")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)


def lr_multiplier(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warmup from 1/warmup (never 0), then cosine to min_lr_ratio (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-step LambdaLR: lr_multiplier over `train.epochs` x steps_per_epoch steps."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, total, warmup, cfg))
