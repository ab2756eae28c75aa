"""Benchmark: one PGD-AT training step, roli's (input gradients only) vs a reference-style step that computes
parameter gradients in every attack step (RoLI reference code, protocol B14). Same model, batch and attack.

    .venv/bin/python benchmarks/pgd_at_step.py [--model vit_tiny_28] [--batch 128] [--steps 5] [--reps 5]

Prints images/s for both and their ratio, measured interleaved in the same process.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import roli
from roli.config import AttackConfig


def reference_attack(model, x, y, cfg: AttackConfig):
    """The straightforward loop: model.eval(), parameters keep requires_grad, loss.backward() each step."""
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-cfg.eps, cfg.eps)).clamp(0, 1)
    for _ in range(cfg.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        x_adv = torch.min(torch.max(x_adv + cfg.step_size * x_adv.grad.sign(), x - cfg.eps), x + cfg.eps).clamp(0, 1)
    model.train()
    return x_adv.detach()


def step(model, opt, x, y, attack):
    x_adv = attack(x, y)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x_adv), y).backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_tiny_28")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = roli.create_backbone(a.model, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.rand(a.batch, a.chans, a.size, a.size), torch.randint(0, 10, (a.batch,))
    cfg = AttackConfig(eps=0.1, step_size=0.025, steps=a.steps, select="last")
    ours = roli.build_attack(cfg)
    runs = {"roli": lambda x, y: ours(model, x, y), "reference": lambda x, y: reference_attack(model, x, y, cfg)}
    times = {k: [] for k in runs}
    for k, fn in runs.items():  # warm-up
        step(model, opt, x, y, fn)
    for _ in range(a.reps):  # interleaved, so drift in machine load hits both alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            step(model, opt, x, y, fn)
            times[k].append(time.perf_counter() - t0)
    ips = {k: a.batch / sorted(v)[len(v) // 2] for k, v in times.items()}
    print(json.dumps({"model": a.model, "batch": a.batch, "pgd_steps": a.steps, "threads": torch.get_num_threads(),
                      "images_per_s": {k: round(v, 1) for k, v in ips.items()},
                      "speedup_roli_vs_reference": round(ips["roli"] / ips["reference"], 3)}, indent=2))


if __name__ == "__main__":
    main()
