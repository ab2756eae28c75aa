"""TransferMethod: freeze everything, inject modules if any, then unfreeze exactly what the method names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from torch import nn

from roli.backbones.normalize import Classifier
from roli.config import TransferConfig
from roli.errors import UnsupportedBackbone
from roli.registry import TRANSFER
from roli.transfer.capabilities import Requirement, refusal, unmet


class TransferMethod:
    """What a transfer method adapts in a backbone: a registered subclass names what it injects and what it trains;
    `apply` freezes everything else, so nothing trains by accident. The head always trains (RanLI: a random head;
    RoLI, Hua et al. arXiv 2312.05716: the adversarial linear probe's head, loaded by roli.transfer.heads).

    Example:
        >>> method = roli.build_transfer(LoraConfig(rank=8))
        >>> model = method.apply(roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10))
        >>> model.method
        'lora'
    """
    config_cls: type[TransferConfig] = TransferConfig
    # What the backbone must offer (roli.transfer.capabilities): each entry a capability or a tuple of alternatives.
    requires: ClassVar[tuple[Requirement, ...]] = ()

    def __init__(self, config: TransferConfig) -> None:
        self.config = config

    def apply(self, model: Classifier) -> Classifier:
        """Adapt `model` in place and return it: check the backbone, freeze it, inject, then unfreeze what this method
        trains and the head; the injected modules are recorded in `model.injected`."""
        self.check(model.net)
        for p in model.parameters():
            p.requires_grad_(False)
        before = set(model.modules())
        self.inject(model.net)
        mark_injected(model, before)  # their whole state is the method's (stored in lean checkpoints)
        for p in self.trainable(model.net):
            p.requires_grad_(True)
        for p in model.head.parameters():  # the head trains in every method
            p.requires_grad_(True)
        model.method = self.config.name
        return model

    def check(self, net: nn.Module) -> None:
        """Raise UnsupportedBackbone if `net` lacks what `requires` declares: one line naming what is missing and the
        methods that do apply to `net`. Methods with further conditions extend this."""
        missing = unmet(self.requires, net)
        if missing:
            raise UnsupportedBackbone(refusal(self.config.name, net, missing))

    def inject(self, net: nn.Module) -> None:
        """Add new modules (adapters, prompts, LoRA); nothing for methods that only unfreeze."""

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        """Backbone parameters this method trains, besides the head."""
        return ()


def mark_injected(model: nn.Module, before: set[nn.Module]) -> None:
    """Record the modules a transfer method added (not in `before`) in `model.injected`: their whole state belongs to
    the method."""
    model.injected = [m for m in model.modules() if m not in before]


def set_train_mode(model: nn.Module, training: bool = True) -> None:
    """Train mode, but frozen BatchNorm keeps its running statistics: a frozen backbone must stay frozen."""
    model.train(training)
    if training:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()


def build_transfer(config: TransferConfig) -> TransferMethod:
    """The registered transfer method for `config` (its `name` picks the class, e.g. lora, adapter, vpt_deep).

    Example:
        >>> from roli.transfer.lora import LoraConfig
        >>> model = roli.build_transfer(LoraConfig(rank=8)).apply(
        ...     roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10))
    """
    return TRANSFER.get(config.name)(config)
