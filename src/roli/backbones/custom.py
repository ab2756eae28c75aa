"""Your own model: any nn.Module that maps [0,1] images to logits (with a head roli can find) or to features (roli
attaches a linear head). It is used as it is: normalise inside it if it needs normalising.

    model = from_module(my_resnet, num_classes=10, example=x[:1])   # or pass it to roli.run(cfg, model=my_resnet)

Head search: timm's `get_classifier()`, else an nn.Linear attribute named `head`, `fc` or `classifier` (replaced
when its output size is not `num_classes`); else the module's output is taken as features of size F and a new
`nn.Linear(F, num_classes)` is attached. Transfer methods see the module itself, so LoRA/adapters/VPT work where
its layers are timm's (a timm ViT/Swin passed as a module), and refuse clearly otherwise.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from roli.backbones.factory import BackboneError
from roli.backbones.normalize import Classifier, PixelNormalize

HEAD_NAMES = ("head", "fc", "classifier")


class ModuleNet(nn.Module):
    """A user's module with timm's head interface (`get_classifier`, `head_name` = the head's module path)."""

    def __init__(self, module: nn.Module, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.module = module
        self.head = head  # attached on top of features; None = the module has its own head
        self.head_name = "head" if head is not None else f"module.{_find_head(module)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The user's module, then roli's head on its flattened features (if it needed one)."""
        out = self.module(x)
        return self.head(out.flatten(1)) if self.head is not None else out

    def get_classifier(self) -> nn.Module:
        """The head (timm's interface): roli's own, or the user's module's Linear found by name."""
        return self.head if self.head is not None else self.module.get_submodule(self.head_name[len("module."):])


def _find_head(module: nn.Module) -> str | None:
    return next((n for n in HEAD_NAMES if isinstance(getattr(module, n, None), nn.Linear)), None)


def from_module(module: nn.Module, num_classes: int, example: torch.Tensor) -> Classifier:
    """Wrap `module` as a roli Classifier with a `num_classes` head; `example` is one input batch ([0,1] images)."""
    if hasattr(module, "get_classifier") and hasattr(module, "reset_classifier"):  # a timm model: used directly
        clf = module.get_classifier()
        if not (isinstance(clf, nn.Linear) and clf.out_features == num_classes):
            module.reset_classifier(num_classes)
        net = module
    elif (attr := _find_head(module)) is not None:
        head = getattr(module, attr)
        if head.out_features != num_classes:
            setattr(module, attr, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
        net = ModuleNet(module)
    else:
        with torch.no_grad():
            was = module.training
            out = module.eval()(example[:1])
            module.train(was)
        if out.dim() < 2:
            raise BackboneError(f"{type(module).__name__} returns shape {tuple(out.shape)}; roli needs logits or "
                                "features of shape (batch, features...)")
        net = ModuleNet(module, nn.Linear(out[0].numel(), num_classes))
    report = {"arch": f"custom:{type(module).__name__}", "known": None, "checkpoint": None, "mean": None,
              "std": None, "normalisation_from": "the module itself", "input_size": None,
              "sha256_of_weights": module_digest(module)}
    model = Classifier(net, PixelNormalize((0.0,), (1.0,)), load_report=report)  # the module takes [0,1] pixels
    return model


def module_digest(module: nn.Module) -> str:
    """A hash of a module's weights (the RoLI stage-1 cache key of a Python-given model)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.dtype != torch.bfloat16 else
                 v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
