"""Small trained models shared by test fixtures."""

import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks import make_attack


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
