"""Collect runs' results.json (and the `roli eval` JSONs beside them) into a markdown table, a CSV, PNG plots
(clean-vs-robust scatter as in the paper's Fig. 1, accuracy vs eps, per-epoch validation curves) and one
self-contained HTML page.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
from pathlib import Path

from roli.evaluation.checks import check_ordering

log = logging.getLogger(__name__)

COLUMNS = ["run", "method", "init", "backbone", "data", "eps", "selected_epoch", "val_clean", "val_robust",
           "test_clean", "test_pgd", "test_aa", "seconds"]
PLOTS = {"scatter": "report_scatter.png", "eps": "report_eps.png", "curves": "report_val_curves.png"}


def eval_results(run_dir: Path) -> list[dict]:
    """The `roli eval` JSONs (eval-*.json) written beside a run's checkpoint, oldest first."""
    found = []
    for path in sorted(Path(run_dir).glob("eval-*.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("report: skipping unreadable %s (%s)", path, e)
            continue
        if isinstance(res, dict) and "results" in res:
            found.append({**res, "file": path.name})
    return sorted(found, key=lambda r: r.get("started", ""))


def _latest(evals: list[dict], want: str, data: str) -> dict | None:
    """The newest evaluation on the run's own test split (dataset `data`) that has `want`: an "autoattack" result
    or a "sweep"."""
    has = {"sweep": lambda e: bool(e.get("sweep")), "autoattack": lambda e: "autoattack" in e.get("results", {})}
    hits = [e for e in evals if e.get("data", {}).get("split") == "test" and e.get("data", {}).get("name") == data
            and has[want](e)]
    return hits[-1] if hits else None


def collect(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        res = json.loads((Path(d) / "results.json").read_text())
        if res.get("status") != "complete":
            continue
        cfg = res["config"]
        aa = _latest(eval_results(d), "autoattack", cfg["data"]["name"])
        rows.append({
            "run": Path(d).name, "method": res["method"], "init": res["init"], "backbone": cfg["backbone"]["name"],
            "data": cfg["data"]["name"], "eps": res["test"]["attack"]["eps"],
            "selected_epoch": res["selected_epoch"], "val_clean": res["best_val"]["clean"],
            "val_robust": res["best_val"]["robust"], "test_clean": res["test"]["clean"],
            "test_pgd": res["test"]["pgd"], "test_aa": aa["results"]["autoattack"]["acc"] if aa else None,
            "seconds": res["seconds"], "pgd_steps": res["test"]["attack"]["steps"], "n_test": res["test"]["n"],
            "aa_n": aa["results"]["autoattack"]["n"] if aa else None,
            "aa_version": aa["attacks"]["autoattack"]["version"] if aa else None,
            "aa_seconds": aa["results"]["autoattack"]["seconds"] if aa else None,
        })
    return rows


def _eps(v: float) -> str:
    """8/255 rather than 0.03: eps values are usually k/255."""
    k = round(v * 255)
    return f"{k}/255" if k and abs(v * 255 - k) < 1e-3 else f"{v:.4g}"


def _cell(v: object, column: str = "") -> str:
    if column == "eps":
        return _eps(v)
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    steps = sorted({r["pgd_steps"] for r in rows})
    names = {"run": "run", "method": "method", "init": "init", "backbone": "backbone", "data": "data", "eps": "eps",
             "selected_epoch": "epoch", "val_clean": "val clean", "val_robust": "val PGD",
             "test_clean": "test clean", "test_pgd": f"test PGD-{'/'.join(map(str, steps))}", "test_aa": "test AA",
             "seconds": "seconds"}
    cols = [c for c in COLUMNS if c != "test_aa" or any(r["test_aa"] is not None for r in rows)]
    return [names[c] for c in cols], [[_cell(r[c], c) for c in cols] for r in rows]


def markdown(rows: list[dict]) -> str:
    head, body = _table(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    n = sorted({r["n_test"] for r in rows})
    text = "\n".join(lines) + f"\n\nAccuracies in %; test on {'/'.join(map(str, n))} images; epoch = selected " \
                              "(best validation PGD accuracy).\n"
    aa = [r for r in rows if r["test_aa"] is not None]
    if aa:
        versions = "/".join(sorted({r["aa_version"] for r in aa}))
        sizes = "/".join(map(str, sorted({r["aa_n"] for r in aa})))
        times = ", ".join(f"{r['run']} {r['aa_seconds']:.0f} s" for r in aa)
        text += f"AA = AutoAttack ({versions}) from `roli eval` on {sizes} test images; wall time {times}.\n"
    return text


def sanity(rows: list[dict], run_dirs: list[Path]) -> str:
    """One line per run: its `roli eval` checks, plus clean >= PGD >= AA on the table's own numbers."""
    by_name = {Path(d).name: Path(d) for d in run_dirs}
    lines = ["## Sanity checks", ""]
    for r in rows:
        latest = {e.get("suite"): e for e in eval_results(by_name[r["run"]])}  # the newest of each suite
        checks = [dict(c, file=e["file"]) for e in latest.values() for c in e.get("checks", [])]
        if r["test_aa"] is not None and r["aa_n"] == r["n_test"]:
            checks.append({**check_ordering({"clean": r["test_clean"], "pgd": r["test_pgd"],
                                             "autoattack": r["test_aa"]}).to_dict(), "file": "this table"})
        failed = [c for c in checks if not c["passed"]]
        if not checks:
            lines.append(f"- {r['run']}: no checks yet (run `roli eval --checkpoint {r['run']}/best.pt --suite full`)")
        elif not failed:
            lines.append(f"- {r['run']}: all {len(checks)} checks passed")
        for c in failed:
            lines.append(f"- **{r['run']}: {c['name']} FAILED** ({c['file']}): {c['message']}")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    markers = {"ranli": "o", "roli": "*"}
    for r in rows:
        ax.scatter(r["test_clean"], r["test_pgd"], marker=markers.get(r["init"], "s"),
                   s=120 if r["init"] == "roli" else 60)
        ax.annotate(f"{r['method']} ({r['init']})", (r["test_clean"], r["test_pgd"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"PGD-{rows[0]['pgd_steps']} accuracy (%), eps={_eps(rows[0]['eps'])}")
    ax.set_title("RanLI (o) vs RoLI (*)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eps_curves(sweeps: dict[str, dict], path: Path) -> None:
    """Accuracy vs eps, one line per run (from `roli eval --suite sweep`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, ev in sweeps.items():
        pts = sorted(ev["sweep"], key=lambda p: p["eps"])
        ax.plot([p["eps"] for p in pts], [p["acc"] for p in pts], marker="o", label=name)
    pgd = next(iter(sweeps.values()))["attacks"]["sweep"]
    ax.axvline(pgd["eps"], color="gray", linestyle="--", linewidth=1, label=f"eval eps {pgd['eps']:.4g}")
    ax.set_xlabel(f"eps ({pgd['norm']}, [0,1] pixel units)")
    ax.set_ylabel(f"PGD-{pgd['steps']} accuracy (%)")
    ax.set_title("accuracy vs eps (should fall to ~0)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def val_curves(histories: dict[str, list[dict]], selected: dict[str, int], path: Path) -> None:
    """Per-epoch validation accuracy, clean and robust, one line per run; a star marks the selected epoch."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        for ax, key in zip(axes, ("val_clean", "val_robust")):
            line, = ax.plot(epochs, [h[key] for h in hist], marker="o", label=name)
            best = [h[key] for h in hist if h["epoch"] == selected.get(name)]
            ax.plot([selected.get(name)] * len(best), best, marker="*", markersize=14, color=line.get_color())
    for ax, title in zip(axes, ("validation clean accuracy (%)", "validation PGD accuracy (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch (* = selected)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _html(text: str, out: Path, pngs: list[str]) -> None:
    """report.md's text in <pre>, the PNGs embedded: one file to mail or attach."""
    imgs = "".join(f'<p><img alt="{p}" src="data:image/png;base64,{base64.b64encode((out / p).read_bytes()).decode()}">'
                   "</p>" for p in pngs)
    (out / "report.html").write_text(f"<!doctype html><meta charset='utf-8'><title>roli report</title>"
                                     f"<pre>{html.escape(text)}</pre>{imgs}\n")


def write_report(out: Path, run_dirs: list[Path]) -> Path:
    """Write report.md, report.csv, the PNG plots and report.html into `out` (derived files, regenerated)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*PLOTS.values(), "report.csv", "report.html"]:
        (out / stale).unlink(missing_ok=True)
    rows = collect(run_dirs)
    text = "# roli report\n\n" + (markdown(rows) if rows else "No complete runs.\n")
    pngs = []
    if rows:
        with open(out / "report.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        dirs = {Path(d).name: Path(d) for d in run_dirs}
        scatter(rows, out / PLOTS["scatter"])
        pngs.append(PLOTS["scatter"])
        sweeps = {r["run"]: s for r in rows if (s := _latest(eval_results(dirs[r["run"]]), "sweep", r["data"]))}
        if sweeps:
            eps_curves(sweeps, out / PLOTS["eps"])
            pngs.append(PLOTS["eps"])
        histories = {r["run"]: h for r in rows
                     if (h := json.loads((dirs[r["run"]] / "results.json").read_text()).get("history"))}
        if histories:
            val_curves(histories, {r["run"]: r["selected_epoch"] for r in rows}, out / PLOTS["curves"])
            pngs.append(PLOTS["curves"])
        captions = {PLOTS["scatter"]: "clean vs robust", PLOTS["eps"]: "accuracy vs eps",
                    PLOTS["curves"]: "validation curves"}
        text += "\n" + "".join(f"![{captions[p]}]({p})\n" for p in pngs)
        text += "\n" + sanity(rows, run_dirs)
        _html(text, out, pngs)
    (out / "report.md").write_text(text)
    return out / "report.md"
