"""Numeric precision of attacks, the training step and evaluation: which one actually runs, and its autocast.

`resolve(requested, device)` turns `fp32 | bf16 | fp16` into a `Precision` (what runs, and why), the only place
roli decides precision; `Precision.autocast()` is the only autocast roli enters. Autocast covers model forwards
only: losses are computed from `logits.float()` and an attack's step arithmetic (sign, projection, best-iterate
bookkeeping) runs in fp32 on the fp32 input, so x_adv is fp32 whatever the precision.

- fp16 needs CUDA: the training step uses `torch.amp.GradScaler`, and the attack's input-gradient backward
  multiplies its loss by a fixed `ATTACK_LOSS_SCALE` (1024) so that small gradients do not underflow to zero in
  fp16 (an all-zero gradient would stall PGD; the step only needs the gradient's sign, or for L2 its direction,
  both unchanged by the scale). fp16 on a CPU is an error naming the fix.
- bf16 runs where the hardware computes it natively: CUDA with bf16 support, or a CPU with AVX-512 BF16 or AMX.
  Elsewhere bf16 is emulated (measured ~4x slower than fp32 on an AVX2 CPU), so roli falls back to fp32 with a
  logged warning and records it, unless ROLI_ALLOW_EMULATED_BF16=1 asks for emulated bf16 anyway (tests,
  benchmarks).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from roli.config import ConfigError

if TYPE_CHECKING:
    from roli.config import Config

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALLOW_EMULATED_BF16 = "ROLI_ALLOW_EMULATED_BF16"
ATTACK_LOSS_SCALE = 1024.0  # fp16 only: the attack's loss is multiplied by this before its input-gradient backward
# CPU feature flags that mean native bf16 arithmetic (x86: AVX-512 BF16, AMX; ARM64: BF16 / SVE-BF16)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


class PrecisionError(ConfigError):
    """The requested precision cannot run on this device; the message names the fix."""


@functools.cache
def cpu_bf16_support() -> tuple[bool, str]:
    """(native bf16 on this CPU, which flags say so). From `torch.cpu.get_capabilities()` (cpuinfo), else the flags
    in /proc/cpuinfo. `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is not used: it is true on any AVX-512 CPU,
    where oneDNN runs bf16 but emulates it."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            found = [f for f in NATIVE_BF16_FLAGS if caps().get(f)]
            return bool(found), ", ".join(found) or "no avx512_bf16/amx_bf16 in torch.cpu.get_capabilities()"
        except (RuntimeError, AttributeError):  # pragma: no cover - an old or unusual build
            pass
    try:  # pragma: no cover - torch >= 2.9 always has get_capabilities
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags |= set(line.split(":", 1)[1].split())
        found = [f for f in NATIVE_BF16_FLAGS if f in flags]
        return bool(found), ", ".join(found) or "no avx512_bf16/amx_bf16 in /proc/cpuinfo"
    except OSError:  # pragma: no cover
        return False, "CPU features unknown"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(bf16 is computed natively on `device`, why)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'supports' if ok else 'does not support'} bf16 natively"
    if device.type == "cpu":
        ok, flags = cpu_bf16_support()
        return ok, f"CPU ({flags})"
    return False, f"{device.type} is not a CPU or CUDA device"


def allow_emulated_bf16() -> bool:
    """Whether ROLI_ALLOW_EMULATED_BF16 (1, true or yes) asks for bf16 even where it is only emulated."""
    return os.environ.get(ALLOW_EMULATED_BF16, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Precision:
    """What runs: `used` (fp32 | bf16 | fp16) for `requested` on `device_type`, and `reason` (for the records)."""

    requested: str = "fp32"
    used: str = "fp32"
    device_type: str = "cpu"
    reason: str = "fp32 requested"

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of `used`."""
        return DTYPES[self.used]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to `used` for model forwards (a no-op for fp32, so fp32 is bit-identical to no autocast)."""
        if self.used == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def attack_loss_scale(self) -> float:
        """Multiplier of an attack's loss before its input-gradient backward (fp16: ATTACK_LOSS_SCALE, else 1)."""
        return ATTACK_LOSS_SCALE if self.used == "fp16" else 1.0

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for the fp16 training step; None otherwise (fp32 and bf16 need none)."""
        return torch.amp.GradScaler(self.device_type) if self.used == "fp16" else None

    def check_device(self, device: torch.device) -> None:
        """Raise ValueError if a non-fp32 precision resolved for one device type meets inputs on another."""
        if self.used != "fp32" and device.type != self.device_type:
            raise ValueError(f"precision {self.used} was resolved for {self.device_type} but the input is on "
                             f"{device.type}; resolve it for the model's device")

    def to_dict(self) -> dict[str, str]:
        """requested, used and reason, as results.json records them."""
        return {"requested": self.requested, "used": self.used, "reason": self.reason}


FP32 = Precision()


def resolve(requested: str, device: torch.device | str, where: str = "precision", warn: bool = True) -> Precision:
    """The precision that runs for `requested` on `device`. fp16 off CUDA raises PrecisionError; bf16 without native
    support falls back to fp32 (a warning when `warn`) unless ROLI_ALLOW_EMULATED_BF16=1. `where` names the
    setting in messages (e.g. `train.precision`, `--precision`)."""
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise PrecisionError(f"{where}: {requested!r} is not valid; choose one of {list(PRECISIONS)}")
    if requested == "fp32":
        return Precision("fp32", "fp32", device.type, "fp32 requested")
    if requested == "fp16":
        if device.type != "cuda":
            raise PrecisionError(
                f"{where}: fp16 needs a CUDA device (fp16 kernels and the gradient scaler), but this run is on "
                f"{device.type}. Use {where}=bf16 (native on CPUs with AVX-512 BF16 or AMX) or {where}=fp32.")
        return Precision("fp16", "fp16", device.type, "fp16 on CUDA (GradScaler for training; attack loss x "
                                                      f"{ATTACK_LOSS_SCALE:g})")
    ok, why = native_bf16(device)
    if ok:
        return Precision("bf16", "bf16", device.type, f"native bf16: {why}")
    if allow_emulated_bf16():
        reason = f"emulated bf16 ({why}), allowed by {ALLOW_EMULATED_BF16}=1: about 4x slower than fp32"
        if warn:
            log.warning("%s: %s", where, reason)
        return Precision("bf16", "bf16", device.type, reason)
    reason = (f"fell back to fp32: no native bf16 ({why}); emulated bf16 measured ~4x slower than fp32. "
              f"Set {ALLOW_EMULATED_BF16}=1 to run emulated bf16 anyway")
    if warn:
        log.warning("%s: bf16 requested, %s", where, reason)
    return Precision("bf16", "fp32", device.type, reason)


@dataclass(frozen=True)
class RunPrecision:
    """A run's two precisions: `train` (training attack and step) and `eval` (validation and test attacks)."""

    train: Precision
    eval: Precision

    def to_dict(self) -> dict[str, Any]:
        """Both precisions as results.json records them."""
        return {"train": self.train.to_dict(), "eval": self.eval.to_dict()}


def run_precision(cfg: Config, device: torch.device | str, warn: bool = True) -> RunPrecision:
    """`train.precision` and `eval.precision` of `cfg`, resolved for `device`."""
    return RunPrecision(train=resolve(cfg.train.precision, device, "train.precision", warn),
                        eval=resolve(cfg.eval.precision, device, "eval.precision", warn))
