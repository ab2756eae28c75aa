"""1 vs N data-parallel processes on the same cell (torchrun; gloo on CPU, NCCL on GPUs): images/s and scaling.

    python benchmarks/ddp_scaling.py [--nproc 2] [--train-limit 2048] [--out benchmarks/results]

The cell is the demo's full finetuning (tiny ViT, MNIST, PGD-5 training, batch 128 global), one epoch. On the
2-core CPU machine this is informative only (N processes share the same cores: 1 process x 2 threads vs 2 x 1);
on a node with N GPUs it is the real scaling. At world size 1 roli does not wrap the model in DDP at all, so a
1-GPU run pays nothing for the distributed code path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run(nproc: int, threads: int, work: Path, limit: int) -> dict:
    sets = ["train.epochs=1", f"data.train_limit={limit}", "data.val_limit=256", "data.test_limit=256",
            f"run.threads={threads}", "train.warmup_epochs=0"]
    out = work / f"n{nproc}"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*base, "-m", "roli", "run", str(REPO / "recipes/tiny/mnist_full_ranli.yaml"), "--out", str(out),
           "--set", *sets]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - t0
    res = json.loads(next(out.glob("*/results.json")).read_text())
    h = res["history"][0]
    return {"nproc": nproc, "threads_per_process": threads, "world_size": res["world_size"],
            "train_seconds": h["train_seconds"], "train_images_per_s": h["train_images_per_s"],
            "val_seconds": h["val_seconds"], "wall_seconds": round(wall, 1), "val_robust": h["val_robust"]}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--nproc", type=int, default=2)
    a.add_argument("--train-limit", type=int, default=2048)
    a.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = a.parse_args()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, cores, Path(tmp), args.train_limit)
        many = run(args.nproc, max(1, cores // args.nproc), Path(tmp), args.train_limit)
    speedup = many["train_images_per_s"] / one["train_images_per_s"]
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": cores,
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "load_before": load_before, "load_after": os.getloadavg(), "runs": [one, many],
              "speedup": round(speedup, 3), "scaling_efficiency": round(speedup / args.nproc, 3),
              "same_val_robust": one["val_robust"] == many["val_robust"]}
    out = Path(args.out)
    (out / "ddp").mkdir(parents=True, exist_ok=True)  # beside, not among, the run.py results the sweep reads
    path = out / "ddp" / f"{report['date'][:10]}-{report['cpu_capability']}.json"
    path.write_text(json.dumps(report, indent=2))
    print("| processes x threads | train img/s | train s | val s |\n|---|---|---|---|")
    for r in (one, many):
        print(f"| {r['nproc']} x {r['threads_per_process']} | {r['train_images_per_s']} | {r['train_seconds']} | "
              f"{r['val_seconds']} |")
    print(f"speedup {speedup:.2f}x, efficiency {speedup / args.nproc:.2f} (load {load_before[0]:.1f} -> "
          f"{report['load_after'][0]:.1f}); same val robust accuracy: {report['same_val_robust']} -> {path}")


if __name__ == "__main__":
    main()
