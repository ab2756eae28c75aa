"""Collect runs' results.json into a markdown table, a CSV and a clean-vs-robust scatter (paper Fig. 1 style)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = ["run", "method", "init", "backbone", "data", "eps", "selected_epoch", "val_clean", "val_robust",
           "test_clean", "test_pgd", "seconds"]


def collect(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        res = json.loads((Path(d) / "results.json").read_text())
        if res.get("status") != "complete":
            continue
        cfg = res["config"]
        rows.append({
            "run": Path(d).name, "method": res["method"], "init": res["init"], "backbone": cfg["backbone"]["name"],
            "data": cfg["data"]["name"], "eps": round(res["test"]["attack"]["eps"], 4),
            "selected_epoch": res["selected_epoch"], "val_clean": res["best_val"]["clean"],
            "val_robust": res["best_val"]["robust"], "test_clean": res["test"]["clean"],
            "test_pgd": res["test"]["pgd"], "seconds": res["seconds"],
            "pgd_steps": res["test"]["attack"]["steps"], "n_test": res["test"]["n"],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    steps = sorted({r["pgd_steps"] for r in rows})
    head = ["run", "method", "init", "backbone", "data", "eps", "epoch", "val clean", "val PGD",
            "test clean", f"test PGD-{'/'.join(map(str, steps))}", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r[c] for c in COLUMNS]
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in vals) + " |")
    n = sorted({r["n_test"] for r in rows})
    return "\n".join(lines) + f"\n\nAccuracies in %; test on {'/'.join(map(str, n))} images; epoch = selected " \
                              "(best validation PGD accuracy).\n"


def scatter(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    markers = {"ranli": "o", "roli": "*"}
    for r in rows:
        ax.scatter(r["test_clean"], r["test_pgd"], marker=markers.get(r["init"], "s"), s=120 if r["init"] == "roli" else 60)
        ax.annotate(f"{r['method']} ({r['init']})", (r["test_clean"], r["test_pgd"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"PGD-{rows[0]['pgd_steps']} accuracy (%), eps={rows[0]['eps']}")
    ax.set_title("RanLI (o) vs RoLI (*)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, run_dirs: list[Path]) -> Path:
    """Write report.md, report.csv and report_scatter.png into `out` (derived files, regenerated each time)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(run_dirs)
    text = "# roli report\n\n" + (markdown(rows) if rows else "No complete runs.\n")
    if rows:
        with open(out / "report.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        scatter(rows, out / "report_scatter.png")
        text += "\n![clean vs robust](report_scatter.png)\n"
    (out / "report.md").write_text(text)
    return out / "report.md"
