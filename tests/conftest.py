"""Seeded CPU fixtures: tiny models, the synthetic dataset, and no network access."""

from __future__ import annotations

import socket

import pytest
import torch

from roli.config import load_config

TINY = {
    "backbone": {"name": "vit_tiny_28"},
    "data": {"name": "synthetic", "batch_size": 64, "eval_batch_size": 128},
    "attack": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "transfer": {"name": "full_finetune", "init": "ranli"},
    "train": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 0.5},
    "stage1": {"epochs": 1},
    "eval": {"attack_steps": 3},
    "run": {"threads": 2},
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never touch the network: any connection attempt fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network access in tests is not allowed")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg():
    """A Config for 2-epoch runs on the synthetic data; override with tiny_cfg(**{"train": {...}})."""

    def make(overrides: list[str] = ()):
        return load_config(data=TINY, overrides=list(overrides))

    return make
