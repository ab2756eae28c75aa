"""Accuracy under no attack (inference mode) and under attacks (fp32, per batch) over a DataLoader."""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from roli.attacks.base import Attack
from roli.distributed import sum_over_ranks, world


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def accuracy(model: nn.Module, loader: DataLoader, attack: Attack | None = None, desc: str = "eval") -> dict:
    """Top-1 accuracy (in %) with or without an attack, plus counts, seconds and images/s."""
    device, correct, n, t0 = _device(model), 0, 0, time.perf_counter()
    was_training = model.training
    shards = getattr(loader.batch_sampler, "shards", None) if world().distributed else None
    model.eval()
    try:
        for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=None)):
            x, y = x.to(device), y.to(device)
            if attack is not None:
                x = attack(model, x, y, shard=shards[i] if shards else None)
            with torch.inference_mode():
                correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    finally:
        model.train(was_training)
    correct, n = (int(v) for v in sum_over_ranks([correct, n], device))  # exact counts over the ranks' shards
    secs = time.perf_counter() - t0
    return {"acc": 100.0 * correct / max(n, 1), "n": n, "seconds": round(secs, 3), "images_per_s": round(n / secs, 1)}


def evaluate(model: nn.Module, loader: DataLoader, attacks: Mapping[str, Attack | None]) -> dict[str, dict]:
    """`{"clean": None, "pgd": PGD(...)}` -> per-attack accuracy dicts."""
    return {name: accuracy(model, loader, atk, desc=name) for name, atk in attacks.items()}
