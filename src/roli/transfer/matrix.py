"""The PEFT capability matrix `roli list` prints: every registered transfer method x backbone family, ✓ or ✗ with
the reason, computed by running each method's own `check` (default config) on a representative timm model of
each family built on the meta device (no memory, no weights, well under a second for all of them).

CLIP ViTs (timm `vit_*_clip_*`) are VisionTransformers with the same layers, so they get the `vit` column; DeiT
likewise.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from roli.errors import UnsupportedBackbone
from roli.registry import TRANSFER
from roli.transfer.capabilities import unmet

# family -> a representative timm architecture (random init on the meta device).
FAMILIES = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224", "convnext": "convnext_tiny",
            "resnet": "resnet50", "xcit": "xcit_tiny_12_p16_224"}


def family_net(family: str) -> nn.Module:
    """The family's representative architecture (FAMILIES) on the meta device: layers and shapes, no data."""
    import timm

    with torch.device("meta"):
        return timm.create_model(FAMILIES[family], pretrained=False)


def verdict(method: str, net: nn.Module) -> str | None:
    """None if `method` (default config) adapts `net`, else why not (what it lacks, or its check's message)."""
    cls = TRANSFER.get(method)
    missing = unmet(cls.requires, net)
    if missing:
        return "needs " + "; and ".join(missing)
    try:
        cls(cls.config_cls(name=method)).check(net)
    except UnsupportedBackbone as e:
        return str(e)
    return None


def capability_matrix(nets: dict[str, nn.Module] | None = None) -> dict[str, dict[str, str | None]]:
    """method -> family -> None (applies) or the reason it does not; `nets`: family -> model (default: FAMILIES
    on the meta device)."""
    nets = {f: family_net(f) for f in FAMILIES} if nets is None else nets
    return {m: {f: verdict(m, net) for f, net in nets.items()} for m in TRANSFER.names()}


def _marks() -> tuple[str, str]:
    """✓ / ✗, or y / - where stdout cannot encode them."""
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
        return "✓", "✗"
    except (UnicodeEncodeError, LookupError):
        return "y", "-"


def matrix_lines(matrix: dict[str, dict[str, str | None]] | None = None) -> list[str]:
    """The matrix as text: a header, one row per method, then each ✗ with its reason."""
    matrix = capability_matrix() if matrix is None else matrix
    yes, no = _marks()
    families = list(next(iter(matrix.values())))
    width = max(map(len, matrix)) + 2
    lines = [f"transfer method x backbone family ({yes} applies, {no} refused; from each method's check on "
             f"{', '.join(f'{f}={FAMILIES.get(f, f)}' for f in families)}):",
             "  " + "".ljust(width) + "  ".join(f.ljust(8) for f in families)]
    for method, row in matrix.items():
        lines.append("  " + method.ljust(width) + "  ".join((yes if row[f] is None else no).ljust(8)
                                                         for f in families))
    for method, row in matrix.items():
        for family, why in row.items():
            if why is not None:
                lines.append(f"  {no} {method} on {family}: {why}")
    return lines


def print_matrix() -> None:
    """Print the matrix and LoRA's default targets per family (for `roli list`)."""
    from roli.transfer.lora_targets import default_targets

    nets = {f: family_net(f) for f in FAMILIES}
    print("\n".join(matrix_lines(capability_matrix(nets))))
    print("  lora's default targets (transfer.targets unset):",
          ", ".join(f"{f} {list(default_targets(net))}" for f, net in nets.items()))
