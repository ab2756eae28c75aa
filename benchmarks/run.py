"""roli's speed benchmark: PGD-AT training epochs against three baselines, training-attack selection, precision,
evaluation (PGD-10, early stop, AutoAttack) and, on CUDA, paper-scale backbones with model-FLOP utilisation.

    python benchmarks/run.py [--quick] [--out DIR]

Every comparison is a ratio measured in one process on the same model, batch and data, with the variants
interleaved (A B C, B C A, ...: drift in machine load hits all of them alike) and the median of N repeats. Absolute
seconds depend on the machine and on whatever else runs on it (the load average before and after is recorded);
ratios are what to compare. Writes `<out>/<date>-<capability>[-quick].{json,md}` (default out:
benchmarks/results) and prints the markdown table.

Variants of a PGD-AT training epoch (k-step PGD on the whole batch, then one training step, over a fixed set of
batches):
  roli   `roli.training.loop.train_one_epoch` with roli's attack (`roli.attacks.build_attack`): roli's code path.
  (a)    reference-style loop: `loss.backward()` in every attack step on a model whose trainable parameters keep
         requires_grad (parameter gradients computed and thrown away), per-batch best iterate by the mean loss.
  (b)    a plain loop around `torchattacks.PGD` (model.eval() for the attack, model.train() for the step).
  (c)    the limit: k x (forward + input-gradient backward, parameters frozen) + 1 x (forward + backward +
         optimizer step), each timed alone on the same batch and summed.

The JSON's `step_costs` (seconds per image of a training step with k attack steps, and its parts) feed the sweep's
cost model: `cost: {measured: <this file>}` in a grid (see src/roli/sweep/estimate.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import inspect
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # roli's progress bars would interleave with the output

import torch
import torch.nn.functional as F

import roli
from roli.attacks import build_attack
from roli.attacks.base import attack_mode
from roli.attacks.pgd import LOSSES, PGD
from roli.backbones.normalize import Classifier, PixelNormalize
from roli.config import (
    ThreatConfig,
    TrainConfig,
    TransferConfig,
    attack_config,
    from_dict,
)
from roli.threat import make_ball
from roli.training.loop import train_one_epoch
from roli.training.optim import build_optimizer, build_scheduler
from roli.transfer.base import set_train_mode

log = logging.getLogger("roli.bench")
FORMAT = "roli-benchmark/1"
ROOT = Path(__file__).resolve().parents[1]

# Targets (pass/fail in the table).
LIMIT_MAX = 1.10  # roli's epoch within 10% of the limit
REF_MIN = {"vit": 1.2, "resnet": 1.4}  # roli vs the reference-style loop, fp32, full finetuning
BF16_MIN = 1.25  # bf16 vs fp32 where bf16 is native

# Dense peak TFLOP/s by GPU name (tensor cores; tf32 = fp32 inputs through TF32 tensor cores; fp32 = CUDA cores).
GPU_PEAKS = [  # (substring of torch.cuda.get_device_name, {precision: TFLOP/s})
    ("H200", {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),  # SXM / HBM3
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
]


# --------------------------------------------------------------------------- machine


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_info(device: torch.device) -> dict:
    import timm

    flags = cpu_flags()
    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": native_bf16(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "roli": roli.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git_commit": _git_commit(),
    }
    try:
        import torchattacks

        info["torchattacks"] = torchattacks.__version__
    except ImportError:
        info["torchattacks"] = None
    info["device_name"] = info["gpu"] or f"{info['cpu_model']} ({info['cpu_capability']}, {info['torch_threads']} threads)"
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def busy_elsewhere(samples: int = 10) -> float | None:
    """Tasks running or runnable now besides this process (median of /proc/loadavg's running count over ~1 s); a
    better signal than the 1-minute load average, which still remembers jobs that just ended (this script's too)."""
    counts = []
    for _ in range(samples):
        try:
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return None
        time.sleep(0.1)
    return max(0.0, statistics.median(counts))


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- data and models


def mnist_batches(n: int, batch: int, res: int, chans: int, device: torch.device, seed: int = 0) -> list:
    """`n` batches of MNIST digits (roli's shipped copy), resized to res x res and repeated to `chans` channels."""
    from roli.config import DataConfig
    from roli.data import build_data

    data = build_data(DataConfig(name="mnist", train_limit=n * batch))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[: n * batch]
    xs = torch.stack([data.train[int(i)][0] for i in idx])
    ys = torch.tensor([int(data.train[int(i)][1]) for i in idx])
    if res != xs.shape[-1]:
        xs = F.interpolate(xs, size=(res, res), mode="bilinear", align_corners=False).clamp(0, 1)
    xs = xs.expand(-1, chans, -1, -1).contiguous()
    return [(xs[i * batch:(i + 1) * batch].to(device), ys[i * batch:(i + 1) * batch].to(device)) for i in range(n)]


def timm_at_size(name: str, res: int, num_classes: int = 10, **kwargs) -> Classifier:
    """A timm ViT built at a reduced image size, wrapped like roli.create_backbone's models (normalisation inside).
    roli's BackboneConfig has no timm `img_size` knob (its input_size resizes to the architecture's own size)."""
    import timm

    net = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=res, **kwargs)
    pc = net.pretrained_cfg
    return Classifier(net, PixelNormalize(pc.get("mean", (0.5,) * 3), pc.get("std", (0.5,) * 3), None, in_chans=3))


@dataclasses.dataclass
class Setting:
    """One model + transfer method + attack + data shape of the training benchmark."""

    arch: str  # the architecture's name (as the sweep's cost model knows it)
    family: str  # vit | resnet (picks the reference-loop target)
    method: str  # roli transfer method
    res: int
    chans: int
    batch: int
    steps: int
    eps: float
    build: Callable[[], Classifier]
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.arch}@{self.res}/{self.method}"

    @property
    def step_size(self) -> float:
        return 2.5 * self.eps / self.steps  # Madry's rule, as roli's tiny recipes


def settings(quick: bool) -> tuple[list[Setting], list[str]]:
    k_small = 3 if quick else 7
    tiny = lambda: roli.create_backbone("vit_tiny_28", num_classes=10)
    vit64 = lambda: timm_at_size("vit_tiny_patch16_224", 64)
    vit_s = lambda: timm_at_size("vit_small_patch16_224", 64, depth=4)
    rn_res = 64 if quick else 112
    rn = lambda: roli.create_backbone("resnet18", num_classes=10)
    out = [Setting("vit_tiny_28", "vit", m, 28, 1, 128, 5, 0.1, tiny) for m in ("full_finetune", "linear_probe", "lora")]
    vit_methods = ("full_finetune", "lora") if quick else ("full_finetune", "linear_probe", "lora")
    out += [Setting("vit_tiny_patch16_224", "vit", m, 64, 3, 32, k_small, 8 / 255, vit64,
                    "timm model built at img_size 64 (16 patches)") for m in vit_methods]
    if not quick:
        # Not the 12-block vit_small: its own name, so the sweep's cost model never mistakes it for that one.
        out += [Setting("vit_small_patch16_224-depth4", "vit", "full_finetune", 64, 3, 32, k_small, 8 / 255, vit_s,
                        "timm vit_small_patch16_224 with depth 4, img_size 64")]
    rn_methods = ("full_finetune",) if quick else ("full_finetune", "linear_probe")
    out += [Setting("resnet18", "resnet", m, rn_res, 3, 32, k_small, 8 / 255, rn) for m in rn_methods]
    skipped = ["LoRA on resnet18: roli's LoRA adapts fused qkv attention (ViT, Swin) only"]
    if quick:
        skipped.append("--quick: vit_tiny_patch16_224 linear probe, vit_small (depth 4), resnet18 linear probe and "
                       "resnet18 at 112 px run in the full benchmark only")
    return out, skipped


def make_model(s: Setting, device: torch.device) -> Classifier:
    torch.manual_seed(0)
    model = s.build()
    model = roli.build_transfer(from_dict(TransferConfig, {"name": s.method})).apply(model)
    return model.to(device)


# --------------------------------------------------------------------------- roli's precision API (if any)


def roli_precision_api() -> bool:
    """roli.precision.resolve exists and build_attack takes a precision (attacks then carry their own autocast)."""
    try:
        from roli.precision import resolve  # noqa: F401
    except ImportError:
        return False
    return "precision" in inspect.signature(build_attack).parameters


def roli_attack(cfg, threat: ThreatConfig, precision: str = "fp32", device: torch.device | None = None):
    """roli's attack as roli's trainer builds it: with `precision` resolved for the device where roli supports it."""
    if precision != "fp32" and roli_precision_api():
        from roli.precision import resolve

        return build_attack(cfg, threat, resolve(precision, device or torch.device("cpu")))
    return build_attack(cfg, threat)


# --------------------------------------------------------------------------- the variants of one epoch


def amp_ctx(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Variant:
    """A training loop over the fixed batches; `epoch()` returns its seconds (and may record parts)."""

    def __init__(self, name: str, model: Classifier, tcfg: TrainConfig, device: torch.device, batches: list) -> None:
        self.name, self.model, self.tcfg, self.device, self.batches = name, model, tcfg, device, batches
        self.opt = build_optimizer(model, tcfg)
        self.sched = build_scheduler(self.opt, tcfg, max(1, len(batches)))
        self.parts: dict[str, list[float]] = {}

    def epoch(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self.run()
        sync(self.device)
        return time.perf_counter() - t0

    def run(self) -> None:
        raise NotImplementedError

    def step(self, x_adv, y, amp) -> None:
        """The training step of the plain loops: what roli's loop does after the attack."""
        with amp:
            logits = self.model(x_adv)
            loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        loss.item()


class RoliEpoch(Variant):
    """roli's own loop and attack; `wrap` = autocast around the whole call (the benchmark's bf16 fallback)."""

    def __init__(self, *a, attack=None, wrap: str | None = None, **kw) -> None:
        super().__init__(*a, **kw)
        self.attack, self.wrap = attack, wrap

    def run(self) -> None:
        with amp_ctx(self.device, self.wrap or "fp32"):
            train_one_epoch(self.model, self.batches, self.opt, self.sched, self.attack, self.tcfg, 0)


def reference_attack(model, x, y, eps: float, alpha: float, steps: int, amp) -> torch.Tensor:
    """The RoLI reference code's way: model.eval(), trainable parameters keep requires_grad, loss.backward() in every
    step (parameter gradients computed, then discarded by the training step's zero_grad), and one iterate for the
    whole batch: the one with the highest mean loss."""
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    best_x, best_loss = x_adv, -math.inf
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with amp:
            out = model(x_adv)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        if loss.item() > best_loss:
            best_x, best_loss = x_adv.detach(), loss.item()
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * x_adv.grad.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad(), amp:
        loss = F.cross_entropy(model(x_adv).float(), y).item()
    if loss > best_loss:
        best_x = x_adv
    model.train()
    return best_x.detach()


class LastIterateNoForward(PGD):
    """roli's PGD loop with `select: last` minus the no-grad forward that today's roli PGD runs on the last iterate
    even when nothing uses it (benchmark-side: what `select: last` could cost; roli's attack is not changed here)."""

    def perturb(self, model, x, y):
        cfg = self.config
        ball = make_ball(self.threat.norm, self.threat.eps)
        x_adv = ball.random_init(x) if cfg.random_start else x.clone()
        for _ in range(cfg.steps):
            x_adv.requires_grad_(True)
            loss = LOSSES[cfg.loss](model(x_adv), y)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = ball.project(ball.step(x_adv.detach(), grad, cfg.step_size), x)
        return x_adv


class ReferenceEpoch(Variant):
    def __init__(self, *a, setting: Setting, precision: str = "fp32", **kw) -> None:
        super().__init__(*a, **kw)
        self.s, self.precision = setting, precision

    def run(self) -> None:
        amp = amp_ctx(self.device, self.precision)
        for x, y in self.batches:
            x_adv = reference_attack(self.model, x, y, self.s.eps, self.s.step_size, self.s.steps, amp)
            self.step(x_adv, y, amp)


class TorchattacksEpoch(Variant):
    def __init__(self, *a, setting: Setting, **kw) -> None:
        super().__init__(*a, **kw)
        import torchattacks

        self.atk = torchattacks.PGD(self.model, eps=setting.eps, alpha=setting.step_size, steps=setting.steps,
                                    random_start=True)

    def run(self) -> None:
        amp = contextlib.nullcontext()
        for x, y in self.batches:
            x_adv = self.atk(x, y)  # torchattacks puts the model in eval mode and restores it
            self.model.train()
            self.step(x_adv, y, amp)


class LimitEpoch(Variant):
    """k x (forward + input-gradient backward, frozen parameters, eval mode) + 1 x (forward + backward + optimizer
    step, train mode), each op timed alone and summed. Also times one no-grad forward per batch (the extra forward
    that roli's PGD spends on the last iterate), reported apart and not part of the limit."""

    def __init__(self, *a, steps: int, precision: str = "fp32", **kw) -> None:
        super().__init__(*a, **kw)
        self.steps, self.precision = steps, precision

    def _timed(self, fn) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        fn()
        sync(self.device)
        return time.perf_counter() - t0

    def epoch(self) -> float:
        amp = amp_ctx(self.device, self.precision)
        model = self.model
        attack_s = train_s = fwd_s = 0.0
        for x, y in self.batches:
            with attack_mode(model), torch.enable_grad():
                for _ in range(self.steps):
                    xa = x.detach().clone().requires_grad_(True)

                    def attack_pass(xa=xa, y=y):
                        with amp:
                            out = model(xa)
                        loss = F.cross_entropy(out.float(), y, reduction="none").sum()
                        torch.autograd.grad(loss, xa)

                    attack_s += self._timed(attack_pass)

                def forward(x=x):
                    with torch.no_grad(), amp:
                        model(x)

                fwd_s += self._timed(forward)
            set_train_mode(model, True)

            def train_pass(x=x, y=y):
                with amp:
                    loss = F.cross_entropy(model(x).float(), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()

            train_s += self._timed(train_pass)
        for k, v in (("attack", attack_s), ("train", train_s), ("forward", fwd_s)):
            self.parts.setdefault(k, []).append(v)
        return attack_s + train_s


def interleave(variants: dict[str, Variant], repeats: int) -> dict[str, list[float]]:
    """One warm-up epoch each, then `repeats` rounds, the order rotated every round."""
    names = list(variants)
    for n in names:
        variants[n].epoch()
        variants[n].parts.clear()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            times[n].append(variants[n].epoch())
    return times


def med(v: list[float]) -> float:
    return statistics.median(v)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num/den (paired: the same round's drift cancels)."""
    return statistics.median(a / b for a, b in zip(num, den))


# --------------------------------------------------------------------------- section 1 + 2: training epochs


def pgd_cfg(s: Setting, select: str = "best", **extra):
    return attack_config("pgd", steps=s.steps, step_size=s.step_size, random_start=True, restarts=1,
                         select=select, **extra)


def train_cfg(precision: str = "fp32") -> TrainConfig:
    # A constant LR after a 0-length warmup: the schedule is not what is measured.
    return TrainConfig(epochs=1000, warmup_epochs=0.0, schedule="constant", lr=1e-4, precision=precision)


def bench_training(s: Setting, device: torch.device, n_batches: int, repeats: int) -> dict:
    log.info("training epoch: %s (batch %d, PGD-%d, %d batches x %d repeats)", s.key, s.batch, s.steps, n_batches,
             repeats)
    batches = mnist_batches(n_batches, s.batch, s.res, s.chans, device)
    base = make_model(s, device)
    threat = ThreatConfig(norm="linf", eps=s.eps)
    tcfg = train_cfg()
    m = lambda: copy.deepcopy(base)
    variants: dict[str, Variant] = {
        "roli": RoliEpoch("roli", m(), tcfg, device, batches, attack=build_attack(pgd_cfg(s, "best"), threat)),
        "roli_last": RoliEpoch("roli_last", m(), tcfg, device, batches, attack=build_attack(pgd_cfg(s, "last"), threat)),
        "last_nofwd": RoliEpoch("last_nofwd", m(), tcfg, device, batches,
                                attack=LastIterateNoForward(pgd_cfg(s, "last"), threat)),
        "reference": ReferenceEpoch("reference", m(), tcfg, device, batches, setting=s),
        "torchattacks": TorchattacksEpoch("torchattacks", m(), tcfg, device, batches, setting=s),
        "limit": LimitEpoch("limit", m(), tcfg, device, batches, steps=s.steps),
    }
    times = interleave(variants, repeats)
    n_img = n_batches * s.batch
    parts = {k: med(v) / n_img for k, v in variants["limit"].parts.items()}
    row = {
        "key": s.key, "arch": s.arch, "family": s.family, "method": s.method, "resolution": s.res, "chans": s.chans,
        "batch": s.batch, "attack_steps": s.steps, "eps": s.eps, "batches": n_batches, "repeats": repeats,
        "note": s.note,
        "trainable_params": sum(p.numel() for p in base.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in base.parameters()),
        "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "seconds_per_epoch": {k: round(med(v), 4) for k, v in times.items()},
        "images_per_s": {k: round(n_img / med(v), 1) for k, v in times.items()},
        "ratios": {
            "roli/limit": round(paired_ratio(times["roli"], times["limit"]), 3),
            "roli_last/limit": round(paired_ratio(times["roli_last"], times["limit"]), 3),
            "reference/roli": round(paired_ratio(times["reference"], times["roli"]), 3),
            "torchattacks/roli": round(paired_ratio(times["torchattacks"], times["roli"]), 3),
            "roli/roli_last": round(paired_ratio(times["roli"], times["roli_last"]), 3),
            "roli/last_nofwd": round(paired_ratio(times["roli"], times["last_nofwd"]), 3),
            "last_nofwd/limit": round(paired_ratio(times["last_nofwd"], times["limit"]), 3),
        },
        # Under interference, noise only adds time: the ratio of the fastest rounds is a second, robust view.
        "ratios_of_min": {f"{a}/{b}": round(min(times[a]) / min(times[b]), 3) for a, b in (
            ("roli", "limit"), ("reference", "roli"), ("torchattacks", "roli"), ("roli", "roli_last"),
            ("roli", "last_nofwd"), ("last_nofwd", "limit"))},
        "limit_parts_seconds_per_image": {k: round(v, 7) for k, v in parts.items()},
    }
    r = row["ratios"]
    row["pass"] = {
        "within_10pct_of_limit": r["roli/limit"] <= LIMIT_MAX,
        "faster_than_torchattacks": r["torchattacks/roli"] > 1.0,
        # The reference-loop target concerns full finetuning: with a frozen backbone the reference also skips the
        # frozen weights' gradients, so there is little to gain.
        "vs_reference": (r["reference/roli"] >= REF_MIN[s.family]) if s.method == "full_finetune" else None,
    }
    log.info("  %s: roli %.2fs (%.0f img/s), roli/limit %.3f, ref/roli %.3f, torchattacks/roli %.3f, best/last %.3f",
             s.key, row["seconds_per_epoch"]["roli"], row["images_per_s"]["roli"], r["roli/limit"],
             r["reference/roli"], r["torchattacks/roli"], r["roli/roli_last"])
    return row


def step_cost(row: dict, machine: dict, precision: str = "fp32", variant: str = "roli") -> dict:
    """Seconds per image of one PGD-AT training step (k attack steps + the step) and its parts, for the sweep."""
    n_img = row["batches"] * row["batch"]
    parts = row["limit_parts_seconds_per_image"]
    return {
        "arch": row["arch"], "transfer": row["method"], "resolution": row["resolution"], "batch": row["batch"],
        "precision": precision, "attack_steps": row["attack_steps"], "select": "best" if variant == "roli" else "last",
        "seconds_per_image": round(row["seconds_per_epoch"][variant] / n_img, 7),
        "attack_pass_seconds_per_image": round(parts["attack"] / row["attack_steps"], 7),
        "train_pass_seconds_per_image": parts["train"],
        "forward_seconds_per_image": parts["forward"],
        "device": machine["device"], "device_name": machine["device_name"], "date": machine["date"][:10],
    }


# --------------------------------------------------------------------------- section 3: precision


def probe_precision(device: torch.device) -> dict:
    """Which parts of `train_one_epoch` roli autocasts when `train.precision: bf16` (a hook records the dtype a
    Linear produces in eval mode, i.e. in the attack, and in train mode, i.e. in the training step)."""
    model = make_model(Setting("vit_tiny_28", "vit", "full_finetune", 28, 1, 8, 1, 0.1,
                               lambda: roli.create_backbone("vit_tiny_28", num_classes=10)), device)
    seen: dict[str, set] = {"attack": set(), "step": set()}
    lin = model.net.blocks[0].mlp.fc1
    h = lin.register_forward_hook(lambda mod, i, o: seen["step" if mod.training else "attack"].add(str(o.dtype)))
    x, y = torch.rand(8, 1, 28, 28, device=device), torch.randint(0, 10, (8,), device=device)
    tcfg = train_cfg("bf16")
    opt = build_optimizer(model, tcfg)
    warnings: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    grab = Grab(level=logging.WARNING)
    logging.getLogger("roli").addHandler(grab)
    try:
        import warnings as pywarn

        with pywarn.catch_warnings(record=True) as caught:
            pywarn.simplefilter("always")
            atk = roli_attack(attack_config("pgd", steps=1, step_size=0.05), ThreatConfig(eps=0.1), "bf16", device)
            train_one_epoch(model, [(x, y)], opt, build_scheduler(opt, tcfg, 1), atk, tcfg, 0)
        warnings += [str(w.message) for w in caught]
        err = None
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        h.remove()
        logging.getLogger("roli").removeHandler(grab)
    attack_bf16 = "torch.bfloat16" in seen["attack"]
    step_bf16 = "torch.bfloat16" in seen["step"]
    label = ("train.precision=bf16 autocasts the attack and the step" if attack_bf16 and step_bf16 else
             "train.precision=bf16 autocasts the step only (not the attack)" if step_bf16 else
             "train.precision=bf16 autocasts the attack only" if attack_bf16 else
             "train.precision=bf16 changes nothing here (fp32 fallback?)")
    return {"attack_bf16": attack_bf16, "step_bf16": step_bf16, "error": err, "warnings": warnings[:5],
            "api": "roli.precision (attacks built with a resolved precision)" if roli_precision_api()
            else "TrainConfig.precision only",
            "implemented": attack_bf16 and step_bf16 and err is None, "label": label if err is None else err}


def bench_precision(s: Setting, device: torch.device, n_batches: int, repeats: int, probe: dict) -> dict:
    log.info("precision: %s", s.key)
    batches = mnist_batches(n_batches, s.batch, s.res, s.chans, device)
    base = make_model(s, device)
    threat = ThreatConfig(norm="linf", eps=s.eps)
    atk = lambda prec="fp32": roli_attack(pgd_cfg(s, "best"), threat, prec, device)
    m = lambda: copy.deepcopy(base)
    variants: dict[str, Variant] = {
        "fp32": RoliEpoch("fp32", m(), train_cfg("fp32"), device, batches, attack=atk()),
        "bf16_roli": RoliEpoch("bf16_roli", m(), train_cfg("bf16"), device, batches, attack=atk("bf16")),
        # Fallback: autocast around roli's whole loop (attack + step), roli's own precision left at fp32.
        "bf16_autocast": RoliEpoch("bf16_autocast", m(), train_cfg("fp32"), device, batches, attack=atk(),
                                   wrap="bf16"),
    }
    times = interleave(variants, repeats)
    n_img = n_batches * s.batch
    row = {
        "key": s.key, "arch": s.arch, "method": s.method, "resolution": s.res, "batch": s.batch,
        "attack_steps": s.steps, "batches": n_batches, "repeats": repeats,
        "seconds_per_epoch": {k: round(med(v), 4) for k, v in times.items()},
        "images_per_s": {k: round(n_img / med(v), 1) for k, v in times.items()},
        "speedup": {k: round(paired_ratio(times["fp32"], times[k]), 3) for k in ("bf16_roli", "bf16_autocast")},
        "roli_precision": probe["label"],
    }
    best = row["speedup"]["bf16_roli"] if probe["implemented"] else row["speedup"]["bf16_autocast"]
    row["pass_bf16"] = best >= BF16_MIN
    log.info("  %s: bf16 speedup roli %.3f, autocast %.3f", s.key, row["speedup"]["bf16_roli"],
             row["speedup"]["bf16_autocast"])
    return row


# --------------------------------------------------------------------------- section 3: evaluation


def robust_tiny_model(device: torch.device, n_fit: int) -> tuple[Classifier, dict]:
    """The shipped robust Fashion-MNIST tiny ViT with a linear head fitted (clean, full batch) on its features."""
    from roli.config import DataConfig
    from roli.data import build_data

    torch.manual_seed(0)
    model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10).to(device).eval()
    data = build_data(DataConfig(name="fashion_mnist", train_limit=n_fit))
    xs = torch.stack([data.train[i][0] for i in range(len(data.train))]).to(device)
    ys = torch.tensor([int(data.train[i][1]) for i in range(len(data.train))], device=device)
    with torch.no_grad():
        feats = torch.cat([model.net.forward_head(model.net.forward_features(model.normalize(xs[i:i + 512])),
                                                  pre_logits=True) for i in range(0, len(xs), 512)])
    head = model.head
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(head(feats), ys).backward()
        opt.step()
    with torch.no_grad():
        train_acc = (head(feats).argmax(1) == ys).float().mean().item() * 100
    return model, {"backbone": "vit_tiny_28_fmnist_robust", "head": f"linear, fitted on {len(xs)} clean "
                   "Fashion-MNIST training images (Adam, 300 full-batch steps)", "head_train_acc": round(train_acc, 1)}


def bench_eval(device: torch.device, quick: bool, repeats: int) -> tuple[dict, list[str]]:
    from roli.config import DataConfig
    from roli.data import build_data, make_loader
    from roli.evaluation.accuracy import accuracy

    notes: list[str] = []
    n_test, n_aa = (256, 128) if quick else (1000, 500)
    model, about = robust_tiny_model(device, 2000 if quick else 5000)
    data = build_data(DataConfig(name="fashion_mnist", test_limit=n_test))
    loader = make_loader(data.test, 256, shuffle=False)
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    threat = ThreatConfig(norm="linf", eps=0.1)
    pgd10 = attack_config("pgd", steps=10, step_size=0.025)
    sig = inspect.signature(accuracy).parameters
    pgd_fields = {f.name for f in dataclasses.fields(type(pgd10))}
    out: dict = {"model": about, "data": f"Fashion-MNIST test, first {len(data.test)} images", "eps": 0.1,
                 "attack": "PGD-10, step 0.025, random start, select best", "repeats": repeats}

    base_kw = {"early_stop": False} if "early_stop" in sig else {}  # plain PGD-10 unless a variant says otherwise

    def run(**kw) -> Callable[[], dict]:
        kw = {**base_kw, **kw}
        atk_cfg = pgd10
        if kw.pop("attack_early_stop", False):
            atk_cfg = dataclasses.replace(pgd10, early_stop=True)
        wrap = kw.pop("wrap", None)
        atk = roli_attack(atk_cfg, threat, kw.pop("attack_precision", "fp32"), device)

        def go() -> dict:
            torch.manual_seed(0)  # the same random starts for every variant: early stop must give the same accuracy
            with amp_ctx(device, wrap or "fp32"):
                return accuracy(model, batches, atk, **kw)

        return go

    variants: dict[str, Callable[[], dict]] = {"fp32": run()}
    if native_bf16(device):
        if roli_precision_api():
            variants["bf16"] = run(attack_precision="bf16")
            out["bf16_how"] = "roli: the attack built with precision bf16 (roli.precision.resolve), accuracy() as is"
        else:
            variants["bf16"] = run(wrap="bf16")
            out["bf16_how"] = ("torch.autocast around roli's accuracy() (benchmark fallback: accuracy() has no "
                               "precision switch yet)")
    else:
        notes.append("PGD-10 evaluation in bf16 skipped: no native bf16 on this device (emulated bf16 is ~4x slower)")
    if "early_stop" in sig:
        variants["early_stop"] = run(early_stop=True)
        out["early_stop_how"] = "accuracy(..., early_stop=True) vs early_stop=False"
    elif "early_stop" in pgd_fields:
        variants["early_stop"] = run(attack_early_stop=True)
        out["early_stop_how"] = "PGD config early_stop: true vs false"
    else:
        notes.append("early-stop vs plain PGD-10 evaluation skipped: neither roli.evaluation.accuracy.accuracy nor "
                     "the PGD config has an early_stop switch in this checkout (eval.early_stop is declared in "
                     "roli.config but not implemented yet)")
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    accs: dict[str, float] = {}
    names = list(variants)
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            res = variants[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
            accs[k] = res["acc"]
    with torch.inference_mode():
        clean = sum((model(x).argmax(1) == y).sum().item() for x, y in batches) / len(data.test) * 100
    out["clean_acc"] = round(clean, 2)
    out["pgd10"] = {k: {"seconds": round(med(v), 3), "images_per_s": round(len(data.test) / med(v), 1),
                        "acc": round(accs[k], 2)} for k, v in times.items()}
    out["speedup_vs_fp32"] = {k: round(paired_ratio(times["fp32"], v), 3) for k, v in times.items() if k != "fp32"}
    log.info("evaluation: %s", out["pgd10"])

    # AutoAttack (custom: APGD-CE + APGD-T), fp32, one run (it is the slow part).
    from roli.attacks.autoattack import AutoAttackConfig
    from roli.evaluation.autoattack import evaluate_autoattack

    aa_cfg = AutoAttackConfig(version="custom", attacks=("apgd-ce", "apgd-t"), seed=0, n_iter=25 if quick else 100,
                              apgd_restarts=1, n_target_classes=3 if quick else None, batch_size=250)
    aa_loader = make_loader(torch.utils.data.Subset(data.test, range(n_aa)), n_aa, shuffle=False)
    try:
        res = evaluate_autoattack(model, aa_loader, aa_cfg, threat)
        out["autoattack"] = {"images": res["n"], "seconds": res["seconds"], "images_per_s": res["images_per_s"],
                             "after": {k: round(v, 2) for k, v in res["after"].items()},
                             "settings": {k: res["settings"][k] for k in ("attacks", "n_iter", "apgd_restarts",
                                                                          "n_target_classes", "library")}}
        log.info("AutoAttack: %s", out["autoattack"])
    except Exception as e:
        out["autoattack"] = {"error": f"{type(e).__name__}: {e}"}
        notes.append(f"AutoAttack failed: {type(e).__name__}: {e}")
    return out, notes


# --------------------------------------------------------------------------- section 4: CUDA, paper-scale


def gpu_peak(name: str, precision: str) -> float | None:
    for sub, peaks in GPU_PEAKS:
        if sub in name:
            return peaks.get(precision)
    return None


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _gpu_flops(base: Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int, int]:
    """Counted FLOPs of one attack pass, one training step and one no-grad forward on the batch (x, y)."""
    model = copy.deepcopy(base)

    def attack_pass():  # .backward() with frozen parameters = the input gradient only (FlopCounterMode's module
        with attack_mode(model), torch.enable_grad():  # hooks do not support autograd.grad on a leaf)
            xa = x.clone().requires_grad_(True)
            F.cross_entropy(model(xa), y, reduction="none").sum().backward()

    def train_pass():
        set_train_mode(model, True)
        F.cross_entropy(model(x), y).backward()

    def fwd():
        model.eval()
        with torch.no_grad():
            model(x)

    return count_flops(attack_pass), count_flops(train_pass), count_flops(fwd)


def bench_gpu_arch(arch: str, device: torch.device, k: int, n_batches: int, batch: int, res: int, repeats: int,
                   machine: dict) -> tuple[dict, list[dict]]:
    s = Setting(arch, "vit", "full_finetune", res, 3, batch, k, 8 / 255,
                lambda: roli.create_backbone(arch, num_classes=10))
    log.info("GPU: %s batch %d PGD-%d", arch, batch, k)
    batches = mnist_batches(n_batches, batch, res, 3, device)
    base = make_model(s, device)
    threat = ThreatConfig(norm="linf", eps=s.eps)

    def m() -> Classifier:
        return copy.deepcopy(base)

    def atk(prec: str = "fp32"):
        return roli_attack(pgd_cfg(s, "best"), threat, prec, device)

    variants: dict[str, Variant] = {
        "fp32": RoliEpoch("fp32", m(), train_cfg("fp32"), device, batches, attack=atk()),
        "bf16": RoliEpoch("bf16", m(), train_cfg("bf16"), device, batches, attack=atk("bf16")),
        "bf16_autocast": RoliEpoch("bf16_autocast", m(), train_cfg("fp32"), device, batches, attack=atk(),
                                   wrap="bf16"),
        "limit_fp32": LimitEpoch("limit_fp32", m(), train_cfg("fp32"), device, batches, steps=k),
        "limit_bf16": LimitEpoch("limit_bf16", m(), train_cfg("fp32"), device, batches, steps=k, precision="bf16"),
        "tf32": TF32Epoch("tf32", m(), train_cfg("fp32"), device, batches, attack=atk()),
    }
    times = interleave(variants, repeats)
    f_att, f_train, f_fwd = _gpu_flops(base, *batches[0])
    flops_epoch = n_batches * (k * f_att + f_train + f_fwd)  # roli: k attack passes + select forward + step
    flops_limit = n_batches * (k * f_att + f_train)
    n_img = n_batches * batch
    name = machine["gpu"] or "cpu (smoke)"
    row = {"arch": arch, "resolution": res, "batch": batch, "attack_steps": k, "batches": n_batches,
           "repeats": repeats, "gpu": name,
           "flops_per_image": {"attack_pass": f_att // batch, "train_step": f_train // batch,
                               "forward": f_fwd // batch},
           "seconds_per_epoch": {v: round(med(t), 4) for v, t in times.items()},
           "images_per_s": {v: round(n_img / med(t), 1) for v, t in times.items()},
           "bf16_speedup": round(paired_ratio(times["fp32"], times["bf16"]), 3),
           "bf16_autocast_speedup": round(paired_ratio(times["fp32"], times["bf16_autocast"]), 3),
           "tf32_speedup": round(paired_ratio(times["fp32"], times["tf32"]), 3),
           "roli/limit": {"fp32": round(paired_ratio(times["fp32"], times["limit_fp32"]), 3),
                          "bf16": round(paired_ratio(times["bf16_autocast"], times["limit_bf16"]), 3)},
           "tflops": {}, "mfu": {}}
    for v, prec in (("fp32", "fp32"), ("tf32", "tf32"), ("bf16", "bf16"), ("bf16_autocast", "bf16"),
                    ("limit_fp32", "fp32"), ("limit_bf16", "bf16")):
        achieved = (flops_limit if v.startswith("limit") else flops_epoch) / med(times[v]) / 1e12
        peak = gpu_peak(name, prec)
        row["tflops"][v] = round(achieved, 2)
        row["mfu"][v] = round(achieved / peak, 3) if peak else None
    costs = []
    for prec, limit in (("fp32", "limit_fp32"), ("bf16", "limit_bf16")):
        pp = {p: med(t) / n_img for p, t in variants[limit].parts.items()}
        costs.append({"arch": arch, "transfer": "full_finetune", "resolution": res, "batch": batch,
                      "precision": prec, "attack_steps": k, "select": "best",
                      "seconds_per_image": round(med(times[prec]) / n_img, 8),  # roli's own switch
                      "attack_pass_seconds_per_image": round(pp["attack"] / k, 8),
                      "train_pass_seconds_per_image": round(pp["train"], 8),
                      "forward_seconds_per_image": round(pp["forward"], 8),
                      "device": device.type, "device_name": machine["device_name"], "date": machine["date"][:10]})
    log.info("  %s: %s img/s, MFU %s", arch, row["images_per_s"], row["mfu"])
    return row, costs


class TF32Epoch(RoliEpoch):
    """roli's loop with TF32 matmuls (fp32 tensors through tensor cores); roli leaves torch's default (off)."""

    def epoch(self) -> float:
        before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            return super().epoch()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def bench_gpu(device: torch.device, quick: bool, repeats: int, machine: dict) -> tuple[list[dict], list[dict]]:
    smoke = device.type != "cuda"  # --gpu-smoke-on-cpu: the section's code on CPU, tiny sizes, numbers meaningless
    k = 1 if smoke else 3 if quick else 7
    n_batches = 1 if smoke else 2 if quick else 4
    archs = (["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"] if smoke
             else ["vit_base_patch16_224", "swin_base_patch4_window7_224"])
    batch, res = (2, 224) if smoke else (64, 224)
    rows, costs = [], []
    for arch in archs:
        try:
            row, c = bench_gpu_arch(arch, device, k, n_batches, batch, res, repeats, machine)
        except Exception as e:
            log.exception("GPU %s failed", arch)
            row, c = {"arch": arch, "error": f"{type(e).__name__}: {e}"}, []
        rows.append(row)
        costs += c
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, costs


# --------------------------------------------------------------------------- the report


def _ok(v: bool | None) -> str:
    return "–" if v is None else ("pass" if v else "FAIL")


def markdown(res: dict) -> str:
    m = res["machine"]
    L = [f"# roli benchmark {m['date'][:10]} ({'quick' if res['quick'] else 'full'})", "",
         (f"- machine: {m['device_name']}; CPU `{m['cpu_model']}`, capability **{m['cpu_capability']}**, "
         f"flags {', '.join(m['cpu_flags']) or 'none of interest'}, native bf16: {m['native_bf16']}"),
         (f"- cores available {m['cores_available']} (cpu_count {m['cpu_count']}), torch threads {m['torch_threads']} "
         f"({res['threads']['why']}); "
         f"GPU: {m['gpu'] or 'none'}"),
         f"- load average (1/5/15 min) before {res['load_before']}, after {res['load_after']}; 1-min load during "
         f"the run (this run adds about {m['torch_threads']}) min {min(res['load_during'], default=0):.2f}, "
         f"max {max(res['load_during'], default=0):.2f}"
         + (" — other jobs shared the cores: absolute times are inflated; the interleaved ratios much less"
            if max(res["load_during"] or [0]) > m["torch_threads"] + 0.5 or (res["load_before"] or [0])[0] > 0.5
            else ""),
         (f"- torch {m['torch']}, timm {m['timm']}, torchattacks {m['torchattacks']}, roli {m['roli']} "
         f"({m['git_commit']}); wall time {res['wall_seconds']:.0f} s"),
         ("- every ratio: same process, same model/batch/data, variants interleaved with rotated order, median of "
         "per-round ratios"), ""]
    tr = res["sections"].get("training", [])
    if tr:
        L += ["## 1. PGD-AT training epoch (fp32)", "",
              ("roli = `train_one_epoch` + roli PGD (select: best); (a) reference-style loop (param. grads in every "
              "attack step, per-batch best iterate); (b) plain loop around `torchattacks.PGD`; (c) limit = k x "
              "(fwd + input-grad bwd) + (fwd + bwd + step), each timed alone. Targets: roli/limit <= "
              f"{LIMIT_MAX}, faster than (b), (a)/roli >= {REF_MIN['vit']} (ViT) / {REF_MIN['resnet']} (ResNet) for "
              "full finetuning (judged on the median of per-round ratios; in brackets the ratio of the fastest "
              "rounds, the robust view when other jobs interfere)."), "",
              ("| model | method | px | batch | PGD | batches x reps | roli s/epoch | roli img/s | limit s | "
              "roli/limit | (a) s | (a)/roli | (b) s | (b)/roli | targets (limit, (b), (a)) |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in tr:
            s, x, p, mn = r["seconds_per_epoch"], r["ratios"], r["pass"], r["ratios_of_min"]
            L.append(f"| {r['arch']} | {r['method']} | {r['resolution']} | {r['batch']} | {r['attack_steps']} | "
                     f"{r['batches']} x {r['repeats']} | {s['roli']:.3f} | {r['images_per_s']['roli']:.0f} | "
                     f"{s['limit']:.3f} | {x['roli/limit']:.3f} ({mn['roli/limit']:.3f}) | {s['reference']:.3f} | "
                     f"{x['reference/roli']:.3f} ({mn['reference/roli']:.3f}) | {s['torchattacks']:.3f} | "
                     f"{x['torchattacks/roli']:.3f} ({mn['torchattacks/roli']:.3f}) | "
                     f"{_ok(p['within_10pct_of_limit'])}, {_ok(p['faster_than_torchattacks'])}, "
                     f"{_ok(p['vs_reference'])} |")
        L += ["", "## 2. Training attack selection: `select: best` vs `select: last` (roli PGD, fp32)", "",
              ("best keeps the per-example worst iterate (bookkeeping every step + one no-grad forward on the last "
              "iterate); last is Madry's PGD-AT. Today's roli PGD runs that final forward with `select: last` too "
              "(restarts = 1), where nothing uses it; `last, no fwd` is roli's loop without it (benchmark-side "
              "subclass, not roli's code), i.e. what `select: last` could cost. `fwd` = that forward, timed alone."),
              "", ("| model | method | PGD | best s | last s | last, no fwd s | best/last | best/(last, no fwd) | "
              "best/limit | last/limit | (last, no fwd)/limit | fwd s |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in tr:
            s, x = r["seconds_per_epoch"], r["ratios"]
            fwd = r["limit_parts_seconds_per_image"]["forward"] * r["batches"] * r["batch"]
            L.append(f"| {r['arch']} | {r['method']} | {r['attack_steps']} | {s['roli']:.3f} | {s['roli_last']:.3f} | "
                     f"{s['last_nofwd']:.3f} | {x['roli/roli_last']:.3f} | {x['roli/last_nofwd']:.3f} | "
                     f"{x['roli/limit']:.3f} | {x['roli_last/limit']:.3f} | {x['last_nofwd/limit']:.3f} | {fwd:.3f} |")
    pr = res["sections"].get("precision")
    if pr:
        L += ["", "## 3a. bf16 vs fp32, PGD-AT training epoch", "",
              (f"roli's `train.precision` in this checkout: {pr['probe']['label']}. `autocast` = torch.autocast(bf16) "
              "around roli's whole loop (attack + step; the benchmark's fallback, labelled as such). Target: bf16 >= "
              f"{BF16_MIN}x fp32 on native bf16 (judged on roli's own switch if it covers the attack, else on the "
              "fallback)."), "",
              ("| model | method | PGD | fp32 s | bf16 (train.precision) s | speedup | bf16 (autocast) s | speedup | "
              "target |"), "|---|---|---|---|---|---|---|---|---|"]
        for r in pr["rows"]:
            s, x = r["seconds_per_epoch"], r["speedup"]
            L.append(f"| {r['arch']} | {r['method']} | {r['attack_steps']} | {s['fp32']:.3f} | {s['bf16_roli']:.3f} | "
                     f"{x['bf16_roli']:.3f} | {s['bf16_autocast']:.3f} | {x['bf16_autocast']:.3f} | "
                     f"{_ok(r['pass_bf16'])} |")
    ev = res["sections"].get("evaluation")
    if ev:
        L += ["", "## 3b. Evaluation: PGD-10 (fp32 / bf16 / early stop) and AutoAttack", "",
              (f"Model: {ev['model']['backbone']} + {ev['model']['head']}; {ev['data']}, eps {ev['eps']}, clean "
              f"accuracy {ev['clean_acc']}%. bf16: {ev.get('bf16_how', 'skipped')}. Early stop: "
              f"{ev.get('early_stop_how', 'skipped')}."), "",
              "| evaluation | seconds | images/s | robust acc % | speedup vs fp32 PGD-10 |", "|---|---|---|---|---|"]
        for k, v in ev["pgd10"].items():
            sp = ev["speedup_vs_fp32"].get(k)
            L.append(f"| PGD-10 {k} | {v['seconds']:.3f} | {v['images_per_s']:.0f} | {v['acc']:.2f} | "
                     f"{'' if sp is None else f'{sp:.3f}'} |")
        aa = ev.get("autoattack", {})
        if "error" not in aa:
            st = aa["settings"]
            L.append(f"| AutoAttack {'+'.join(st['attacks'])} (n_iter {st['n_iter']}, {st['n_target_classes']} "
                     f"targets), {aa['images']} images | {aa['seconds']:.1f} | {aa['images_per_s']:.1f} | "
                     f"{aa['after'][st['attacks'][-1]]:.2f} (after each: {aa['after']}) | |")
        else:
            L.append(f"| AutoAttack | error: {aa['error']} | | | |")
    gpu = res["sections"].get("gpu")
    L += ["", "## 4. CUDA: ViT-B/16 and Swin-B at 224, batch 64, full finetuning", ""]
    if gpu:
        L += [("MFU = counted model FLOPs (torch.utils.flop_counter: k attack passes + select forward + step) / time / "
              "dense peak of the GPU for that precision (tf32 peak for tf32, CUDA-core fp32 peak for fp32)."), "",
              ("bf16 = roli's `train.precision: bf16`; bf16 autocast = torch.autocast around roli's whole loop "
              "(attack + step). roli/limit bf16 compares the autocast loop with the bf16 limit."), "",
              ("| arch | GPU | PGD | fp32 img/s | tf32 img/s | bf16 img/s | bf16 autocast img/s | bf16/fp32 | "
              "MFU fp32 | MFU tf32 | MFU bf16 | MFU bf16 autocast | roli/limit fp32 | roli/limit bf16 |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def f(v):
            return "?" if v is None else f"{100 * v:.1f}%"

        for r in gpu:
            if "error" in r:
                L.append(f"| {r['arch']} | error: {r['error']} |" + " |" * 12)
                continue
            ips, mfu = r["images_per_s"], r["mfu"]
            L.append(f"| {r['arch']} | {r['gpu']} | {r['attack_steps']} | {ips['fp32']:.0f} | {ips['tf32']:.0f} | "
                     f"{ips['bf16']:.0f} | {ips['bf16_autocast']:.0f} | {r['bf16_speedup']:.3f} | {f(mfu['fp32'])} | "
                     f"{f(mfu['tf32'])} | {f(mfu['bf16'])} | {f(mfu['bf16_autocast'])} | "
                     f"{r['roli/limit']['fp32']:.3f} | {r['roli/limit']['bf16']:.3f} |")
    else:
        L.append("Skipped: no CUDA device in this run (the section runs when `torch.cuda.is_available()`).")
    if res["skipped"]:
        L += ["", "## Skipped / notes", ""] + [f"- {s}" for s in res["skipped"]]
    L += ["", (f"Step costs for the sweep's cost model: {len(res['step_costs'])} entries in the JSON "
          "(`cost: {measured: <json>}` in a grid).")]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer models, batches and repeats (a few minutes on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and markdown")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per comparison (default 3 quick, 5 full)")
    ap.add_argument("--batches", type=int, default=None, help="batches per epoch (default 2 quick, 4 full)")
    ap.add_argument("--threads", default="auto",
                    help="torch threads, or auto (default): every core available on an idle machine, fewer when the "
                         "1-minute load average says other jobs run (2 threads that share their cores with another "
                         "job spin-wait on each other: tiny models then run many times slower, and ratios are noise)")
    ap.add_argument("--only", nargs="+", default=None, metavar="SECTION",
                    choices=["training", "precision", "evaluation", "gpu"], help="run only these sections")
    ap.add_argument("--match", default=None, help="regex on the training settings' keys, e.g. 'resnet'")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--gpu-smoke-on-cpu", action="store_true", help=argparse.SUPPRESS)  # tests section 4's code
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("roli").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load_before = loadavg()
    if a.threads == "auto":
        busy = busy_elsewhere()
        what = "tasks running elsewhere"
        if busy is None:
            busy, what = (load_before[0] if load_before else 0.0), "1-min load average"
        threads = max(1, cores - math.ceil(busy - 0.25))
        why = (f"auto: {threads} of {cores} cores ({what} at the start: {busy:g}"
               + ("; other jobs run, so fewer threads than cores, else they spin-wait on each other)"
                  if threads < cores else ")"))
    else:
        threads, why = int(a.threads), "--threads"
    torch.set_num_threads(threads)
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    repeats = a.repeats or (4 if a.quick else 7)
    n_batches = a.batches or (2 if a.quick else 4)
    sections = set(a.only or ["training", "precision", "evaluation", "gpu"])
    t_start = time.perf_counter()
    res: dict = {"format": FORMAT, "quick": a.quick, "load_before": load_before, "machine": machine_info(device),
                 "threads": {"torch": threads, "cores": cores, "why": why},
                 "targets": {"roli/limit_max": LIMIT_MAX, "reference/roli_min": REF_MIN, "bf16_min": BF16_MIN},
                 "sections": {}, "step_costs": [], "skipped": [], "load_during": []}
    machine = res["machine"]
    log.info("machine: %s; load %s", machine["device_name"], res["load_before"])
    todo, skipped = settings(a.quick)
    res["skipped"] += skipped
    if a.match:
        todo = [s for s in todo if re.search(a.match, s.key)]
    if "training" in sections:
        rows = res["sections"]["training"] = []
        for s in todo:
            try:
                row = bench_training(s, device, n_batches, repeats)
            except Exception as e:
                log.exception("%s failed", s.key)
                res["skipped"].append(f"{s.key}: failed: {type(e).__name__}: {e}")
                continue
            rows.append(row)
            res["load_during"].append(loadavg()[0])
            res["step_costs"].append(step_cost(row, machine))
    if "precision" in sections:
        if native_bf16(device):
            probe = probe_precision(device)
            rows = []
            names = ("vit_tiny_28@28/full_finetune", "vit_tiny_patch16_224@64/full_finetune",
                     "resnet18@64/full_finetune", "resnet18@112/full_finetune")
            for s in todo:
                if s.key in names:
                    rows.append(bench_precision(s, device, n_batches, max(3, repeats - 1) if a.quick else repeats,
                                                probe))
                    res["load_during"].append(loadavg()[0])
            res["sections"]["precision"] = {"probe": probe, "rows": rows}
            if not probe["implemented"]:
                res["skipped"].append(f"roli's train.precision: {probe['label']}; the bf16 target is judged on the "
                                      "benchmark's autocast fallback around roli's loop")
        else:
            res["skipped"].append(f"bf16 training skipped: {machine['cpu_capability']} CPU without native bf16 "
                                  "(no avx512_bf16/amx_bf16): autocast would emulate bf16 (~4x slower)")
    if "evaluation" in sections:
        ev, notes = bench_eval(device, a.quick, repeats)
        res["load_during"].append(loadavg()[0])
        res["sections"]["evaluation"] = ev
        res["skipped"] += notes
    if "gpu" in sections:
        if device.type == "cuda" or a.gpu_smoke_on_cpu:
            rows, costs = bench_gpu(device, a.quick, repeats if device.type == "cuda" else 1, machine)
            res["sections"]["gpu"] = rows
            res["step_costs"] += costs
        else:
            res["skipped"].append("CUDA section (ViT-B/16, Swin-B at 224, fp32 vs bf16, MFU) skipped: no GPU")
    res["load_after"] = loadavg()
    res["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    md = markdown(res)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = (re.sub(r"[^A-Za-z0-9]+", "-", machine["gpu"]).strip("-") if machine["gpu"]
           else machine["cpu_capability"])
    stem = f"{machine['date'][:10]}-{tag}{'-quick' if a.quick else ''}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
