"""Shared by the reliability tests: roli in a subprocess killed by SIGKILL, the CLI in-process with its stderr, and
comparisons of two runs' numbers and weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from roli.checkpoints import load_file
from roli.cli.main import main
from roli.files import read_json

REPO = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("killer.py")
# Wall-clock fields: everything else in results.json must be bit-identical between two runs with the same seed.
TIMING = {"train_seconds", "train_images_per_s", "val_seconds", "seconds", "pgd_images_per_s", "images_per_s",
          "started", "finished", "command", "run_dir", "checkpoint", "state", "resumed", "file"}


def write_recipe(cfg, folder: Path, name: str) -> Path:
    """The recipe file of a test run: `cfg` as roli's own config.yaml would hold it."""
    from roli.config import dump_config

    path = folder / name
    dump_config(cfg, path)
    return path


def reference_run(recipe: Path, out: Path) -> Path:
    """The uninterrupted run of `recipe` (same seed), through the CLI; returns its run folder."""
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    return out / recipe.stem


def killed(target: str, nth: int, roli_args: list[str], match: str | None = None) -> subprocess.CompletedProcess:
    """Run `roli ROLI_ARGS` in a subprocess that SIGKILLs itself at the `nth` call of `target` (see killer.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(KILLER), target, str(nth), *(["--match", match] if match else []), "--",
           *map(str, roli_args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """`roli ARGV` in-process: (exit code, stderr). A SystemExit (argparse, or a CLI usage error) counts too."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    return rc, capsys.readouterr().err


def strip(obj: Any) -> Any:
    """results.json without wall-clock fields and paths."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def numbers(run_dir: Path) -> dict:
    """What a run computed: history, selection and test numbers (no timing, paths or versions)."""
    res = read_json(Path(run_dir) / "results.json")
    assert res["status"] == "complete", res.get("status")
    keep = ("history", "selected_epoch", "best_val", "test", "params", "data", "stage1_key", "seed", "method", "init")
    out = {k: strip(res.get(k)) for k in keep}
    if res.get("stage1"):
        out["stage1"] = strip({k: v for k, v in res["stage1"].items() if k != "run_dir"})
    return out


def tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside a loaded checkpoint, by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(tensors(v, f"{prefix}/{k}"))
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = tensors(load_file(a)), tensors(load_file(b))
    assert ta.keys() == tb.keys() and ta, (a, b)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), f"{k} differs between {a} and {b}"


def assert_same_run(reference: Path, other: Path) -> None:
    """Bit-identical: results.json numbers and every tensor of best.pt."""
    assert numbers(other) == numbers(reference)
    assert_same_weights(reference / "best.pt", other / "best.pt")


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob(".*.tmp"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under a folder: content and modification time (to prove it was not touched)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}
