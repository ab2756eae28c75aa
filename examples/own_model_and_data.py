"""Bring your own model and data: adversarially finetune any nn.Module on any torch Datasets, RanLI vs RoLI.

    python examples/own_model_and_data.py [--out runs/example]       # about a minute on 2 CPU cores

The model is a plain PyTorch CNN (not timm, not registered); the data are TensorDatasets made here (any map-style
Dataset returning (C x H x W float image in [0,1], int label) works, e.g. torchvision's with ToTensor()). The run
folders are the same as for a recipe (results.json, best.pt, report.md).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import TensorDataset

import roli


class SmallCNN(nn.Module):
    """Maps [0,1] images to logits; `fc` is the head roli finds (and resizes to the number of classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.fc = nn.Linear(32, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def toy_data(n: int, seed: int) -> TensorDataset:
    """Four classes of 16x16 images: a bright square in one of the four quadrants, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, r * 8 + 2:r * 8 + 6, col * 8 + 2:col * 8 + 6] += 0.6
    return TensorDataset(x.clamp(0, 1), y)


def main(argv: list[str] | None = None) -> dict:
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--out", default="runs/example")
    a.add_argument("--epochs", type=int, default=4)
    args = a.parse_args(argv)
    data = (toy_data(1024, 0), toy_data(256, 1), toy_data(512, 2))  # train, val, test
    model = SmallCNN()  # pretrained weights would be loaded here (model.load_state_dict(...))
    results = {}
    for init in ("ranli", "roli"):
        cfg = roli.load_config(data={
            "threat": {"norm": "linf", "eps": 0.05},
            "attack": {"name": "pgd", "steps": 3, "step_size": 0.02},
            "eval": {"attack": {"name": "pgd", "steps": 10, "step_size": 0.0125}},
            "transfer": {"name": "full_finetune", "init": init},
            "train": {"epochs": args.epochs, "lr": 1e-2, "warmup_epochs": 0.5},
            "stage1": {"epochs": 2, "optimizer": "adamw", "lr": 1e-2},
            "data": {"batch_size": 64},
        })
        results[init] = roli.run(cfg, out=args.out, name=f"cnn-{init}", model=model, data=data)
        t = results[init]["test"]
        print(f"{init}: test clean {t['clean']:.1f}%, PGD-10 {t['pgd']:.1f}% -> {results[init]['run_dir']}")
    return results


if __name__ == "__main__":
    main()
