"""A third-party roli plugin used by the tests: one transfer method and one attack, registered from outside roli."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from roli.attacks.pgd import FGSM
from roli.config import TransferConfig
from roli.registry import ATTACKS, TRANSFER
from roli.transfer.base import TransferMethod


@dataclass(frozen=True, kw_only=True)
class NormTuneConfig(TransferConfig):
    name: str = "demo_norm_tune"
    include_head: bool = True  # a field of the plugin's own


@TRANSFER.register("demo_norm_tune")
class NormTune(TransferMethod):
    """Train only the LayerNorm parameters (and the head)."""

    config_cls = NormTuneConfig

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        return [p for m in net.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]


ATTACKS.register("demo_fgsm")(type("DemoFGSM", (FGSM,), {}))
