"""Attack base class: input-gradient only, eval mode, and model state always restored."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from roli.config import AttackConfig, ThreatConfig, attack_config
from roli.registry import ATTACKS



@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while attacking; restored even if the attack raises.

    Parameters must not require grad during the attack: then backward computes input gradients only,
    which saves the weight-gradient half of every backward pass (spec B14).
    """
    was_training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in grads.items():
            p.requires_grad_(g)
        for m, t in was_training.items():
            m.train(t)


class Attack:
    """Call as `attack(model, x, y) -> x_adv`, with x in [0,1]; the model normalises internally. The threat model
    (norm, eps) is the run's `threat` section; the attack's own config holds only how it searches."""

    config_cls: type[AttackConfig] = AttackConfig

    def __init__(self, config: AttackConfig, threat: ThreatConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config
        self.threat = threat

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, shard=None) -> torch.Tensor:
        """`shard` (roli.distributed.Shard): x is rows [start, start + len(x)) of a global batch of `size`
        rows; random starts are drawn for the whole global batch, so N ranks attack exactly as one process would."""
        self.shard = shard
        with attack_mode(model), torch.enable_grad():
            x_adv = self.perturb(model, x.detach(), y)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def build_attack(config: AttackConfig, threat: ThreatConfig) -> Attack:
    """The registered attack for `config` under the threat model `threat`."""
    return ATTACKS.get(config.name)(config, threat)


def make_attack(name: str = "pgd", *, eps: float, norm: str = "linf", **fields) -> Attack:
    """The Python shortcut: `make_attack("pgd", eps=8/255, steps=10, step_size=2/255)` (fields checked as in YAML)."""
    return build_attack(attack_config(name, **fields), ThreatConfig(norm=norm, eps=eps))
