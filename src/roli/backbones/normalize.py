"""The model's first layer: attacks see [0,1] pixels; normalisation and resizing happen inside the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from roli.errors import BackboneError, one_line


class PixelNormalize(nn.Module):
    """Inputs in [0,1] pixels -> what the network expects: gray repeated to its channels, resized (bilinear) to
    `input_size`, then (x - mean) / std. Inside the model, so every attack's eps is in pixel units."""
    def __init__(self, mean, std, input_size: int | None = None, in_chans: int | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = input_size
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x of shape (batch, channels, height, width) in [0,1] -> the network's normalised input."""
        if self.in_chans and x.shape[1] == 1 and self.in_chans > 1:
            x = x.expand(-1, self.in_chans, -1, -1)  # gray data on a colour backbone
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def head_name(net: nn.Module) -> str:
    """The classifier's module path inside a network: its own `head_name` (roli's ModuleNet), else timm's
    `pretrained_cfg["classifier"]` ("head", "fc", "head.fc", ...), else "head"."""
    return getattr(net, "head_name", None) or (getattr(net, "pretrained_cfg", None) or {}).get("classifier", "head")


class Classifier(nn.Module):
    """`normalize` then the (timm) network `net`: the model every attack sees, taking [0,1] pixels.

    It carries what roli knows about it, declared here rather than patched on: the head's path inside `net`, how
    the backbone was built (results.json's `backbone`), the transfer method applied and the modules that method
    added (whose whole state is the method's, see roli.transfer.state).

    Example:
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model.head_name, model.method, model(torch.rand(2, 1, 28, 28)).shape
        ('head', None, torch.Size([2, 10]))
    """

    head_name: str  # the head's module path inside `net` (see `head_name`)
    load_report: dict  # architecture, checkpoint file and hash, normalisation and its source: results.json's backbone
    method: str | None  # the transfer method `TransferMethod.apply` applied; None before
    injected: list[nn.Module]  # the modules that method added (LoRA, adapters, prompts and their children)

    def __init__(self, net: nn.Module, normalize: PixelNormalize, load_report: dict | None = None) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.head_name = head_name(net)
        self.load_report = load_report or {}
        self.method = None
        self.injected = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for [0,1] pixels x of shape (batch, channels, height, width)."""
        return self.net(self.normalize(x))

    @property
    def head(self) -> nn.Module:
        """The classification head (`net.get_classifier()`): trained by every transfer method."""
        return self.net.get_classifier()


def check_inputs(model: Classifier, data, num_classes: int, name: str, n: int = 2) -> None:
    """One forward of the first `n` examples of `data` (a training split) before a run starts: an input the backbone
    cannot take (an RGB dataset into a 1-channel backbone, 224-pixel images into a 28-pixel ViT, an impossible
    `backbone.input_size`) or logits of the wrong shape is one BackboneError line naming the shapes and the fix, not
    a traceback in epoch 1."""
    x = torch.stack([data[i][0] for i in range(min(n, len(data)))])
    shape = "x".join(map(str, x.shape[1:]))
    want = model.normalize.in_chans
    if want and x.shape[1] > want:
        raise BackboneError(f"the data has {x.shape[1]} channels but {name} takes {want}: use a backbone for "
                            f"{x.shape[1]}-channel images (roli repeats a gray channel, it never drops colour)")
    was = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        raise BackboneError(f"{name} cannot take the data's {shape} (channels x height x width) images: {one_line(e)}"
                            "; match data.crop_size (image folders) to the backbone's input size, or set "
                            "backbone.input_size to resize inside the model") from None
    finally:
        model.train(was)
    if tuple(out.shape) != (len(x), num_classes):
        raise BackboneError(f"{name} gives outputs of shape {tuple(out.shape)} for {len(x)} images of {shape}; "
                            f"roli needs logits of shape ({len(x)}, {num_classes})")
