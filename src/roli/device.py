"""Where a run computes: device choice, a name for results, and deterministic mode scoped to one run."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from roli.errors import DeviceError, OutOfMemory

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` = CUDA when present, else CPU; `cuda` without a GPU is an error, never a silent CPU run."""
    if name not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device {name!r} is unknown; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for but no CUDA device is available; use auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu (AVX512, 2 threads)`: what results.json records."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms for one run, restored afterwards (so one sweep cell cannot leak it into the next).

    On CUDA, cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first use; ops without a deterministic kernel (e.g.
    the backward of bilinear resizing) warn instead of failing (`warn_only`).
    """
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if enabled:
        if env_before is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
        if enabled and env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def oom_hint(stage: str, batch_key: str, batch_size: int, fix: str | None = None) -> Iterator[None]:
    """Turn a device out-of-memory error inside the block into roli.errors.OutOfMemory naming the batch size
    (`batch_key`, e.g. data.batch_size) and how to fit (`fix`; default: lower it with --set)."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        fix = fix or (f"lower {batch_key} (e.g. --set {batch_key}={max(1, batch_size // 2)}), use train.precision: "
                      "bf16, or a smaller backbone or input_size; an interrupted run continues with `roli run "
                      "--resume <run folder>`")
        raise OutOfMemory(f"out of memory during {stage} with {batch_key}={batch_size} ({first}). Hint: {fix}") from e
