"""Small models shared by test fixtures: a trained MLP, one tiny backbone per family, a small BatchNorm net."""

import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks import make_attack
from roli.backbones import build_model
from roli.backbones.normalize import Classifier, PixelNormalize
from roli.config import BackboneConfig


def adversarially_trained_mlp(xs: torch.Tensor, ys: torch.Tensor) -> nn.Module:
    """A 784-64-10 MLP, PGD-3 trained (L-inf eps 0.1, step 0.04) for 5 epochs in batches of 100; seeded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    attack = make_attack(eps=0.1, step_size=0.04, steps=3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(5):
        perm = torch.randperm(len(ys))
        for i in range(0, len(ys), 100):
            x, y = xs[perm[i : i + 100]], ys[perm[i : i + 100]]
            loss = F.cross_entropy(model(attack(model, x, y)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


# --- one tiny random-init model per backbone family (the registry contracts: tests/transfer, tests/attacks) -------

# Each takes the contract tests' 28x28 grey images: roli's own input layer resizes and repeats channels as needed.
FAMILIES = ("vit", "resnet", "convnext", "swin", "xcit")


def perturb(net: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere (LayerNorm 1/0 defaults would hide swapped norms), BN statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else t + 0.05 * torch.randn(t.shape, generator=g))
    return net.eval()


def tiny_backbone(family: str, num_classes: int = 4, seed: int = 0) -> Classifier:
    """A seeded, random-init roli Classifier of `family` (FAMILIES), built as `roli.backbones.build_model` builds
    a timm architecture: ViT = roli's vit_tiny_28 (LayerNorm), ResNet = timm's test_resnet (BatchNorm), ConvNeXt =
    timm's test_convnext at 32x32 (LayerNorm2d, depthwise convs, Linear MLPs), Swin = a 2-stage Swin-T of width 16
    at 32x32 (window 4: shifted windows, one patch merging), whose size kwargs build_model cannot pass; XCiT = a
    2-block XCiT of width 32, patch 8, at 32x32 (4x4 patches; conv patch embedding and local patch interaction
    with BatchNorm; one class-attention block with separate q/k/v)."""
    torch.manual_seed(seed)
    if family == "vit":
        return build_model(BackboneConfig(name="vit_tiny_28"), num_classes)
    if family == "resnet":
        return build_model(BackboneConfig(name="test_resnet"), num_classes)
    if family == "convnext":  # four stages of stride 4, 2, 2, 2: 28x28 would shrink to nothing
        return build_model(BackboneConfig(name="test_convnext", input_size=32), num_classes)
    if family in ("swin", "xcit"):
        import timm

        if family == "swin":
            net = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, embed_dim=16,
                                    depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=num_classes)
        else:
            net = timm.create_model("xcit_nano_12_p8_224", pretrained=False, img_size=32, embed_dim=32, depth=2,
                                    num_heads=2, cls_attn_layers=1, num_classes=num_classes)
        pc = net.pretrained_cfg
        return Classifier(net, PixelNormalize(pc["mean"], pc["std"], input_size=32, in_chans=3))
    raise ValueError(f"unknown backbone family {family!r}; choose one of {FAMILIES}")


class SmallNet(nn.Module):
    """A conv net with BatchNorm and Dropout (train and eval mode give different outputs) for 1x12x12 inputs."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 5 * 5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(F.relu(self.bn(self.conv(x))).flatten(1)))


class RaisesOnCall(nn.Module):
    """Wraps a model and raises on its n-th forward call."""

    def __init__(self, inner: nn.Module, n: int) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom in forward")
        return self.inner(x)


def modes(model: nn.Module) -> list[bool]:
    """Every module's train flag, in order: what an attack must give back."""
    return [m.training for m in model.modules()]


def grad_flags(model: nn.Module) -> list[bool]:
    """Every parameter's requires_grad, in order: what an attack must give back."""
    return [p.requires_grad for p in model.parameters()]


def mixed_state(net: nn.Module) -> None:
    """A training SmallNet with a frozen BatchNorm inside and some frozen parameters: all of it must come back."""
    net.train()
    net.bn.eval()
    net.conv.bias.requires_grad_(False)
    net.bn.weight.requires_grad_(False)
