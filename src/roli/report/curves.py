"""`roli interpolate`'s files: the clean-vs-robust curve of a run's weight interpolation (measured by
roli.evaluation.interpolate) as curve.csv, curve.json and curve.png in RUN/interpolate/ (or interpolate-2, ...:
an earlier curve is never overwritten)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from roli.errors import OutputExists
from roli.files import atomic_write_json, atomic_write_text, write_atomic

FILES = ("curve.csv", "curve.json", "curve.png")


def curve_folder(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Where the curve goes: `out` (which must not exist, or be empty: OutputExists naming the fix), else
    RUN/interpolate, or the first free RUN/interpolate-N (a second curve, e.g. other alphas, keeps the first)."""
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise OutputExists(f"--out {out} exists and is not empty; roli does not overwrite results: choose "
                               "another folder (or leave --out out: RUN/interpolate-N is used)")
        return out
    for i in range(1, 10_000):
        path = Path(run_dir) / ("interpolate" if i == 1 else f"interpolate-{i}")
        if not path.exists():
            return path
    raise OutputExists(f"no free interpolate folder in {run_dir}; give --out")


def curve_csv(curve: dict) -> str:
    """One row per alpha: alpha, the selection split's clean and robust accuracy, test clean and robust (empty
    where not measured: test is measured at the chosen alpha, 0 and 1 only)."""
    split = curve["split"]
    cols = ["alpha", f"{split}_clean", f"{split}_robust", "test_clean", "test_robust"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*cols, "chosen"])
    for r in curve["rows"]:
        w.writerow([*("" if r[c] is None else r[c] for c in cols), int(r["alpha"] == curve["chosen_alpha"])])
    return buf.getvalue()


def plot_curve(curve: dict, path: Path) -> None:
    """Robust vs clean accuracy on the selection split, one point per alpha (labelled), the chosen alpha ringed,
    and the test numbers where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split, rows = curve["split"], curve["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    xs, ys = [r[f"{split}_clean"] for r in rows], [r[f"{split}_robust"] for r in rows]
    ax.plot(xs, ys, "-o", color="C0", ms=5, label=f"{split} (alpha 0 -> 1)")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{r['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    tested = [r for r in rows if r["test_clean"] is not None]
    ax.plot([r["test_clean"] for r in tested], [r["test_robust"] for r in tested], "s", color="C1", ms=6,
            label="test (alpha 0, 1, chosen)")
    chosen = curve["chosen"]
    ax.plot([chosen[f"{split}_clean"]], [chosen[f"{split}_robust"]], "o", ms=13, mfc="none", mec="C3", mew=2,
            label=f"chosen alpha {curve['chosen_alpha']:g}")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy (%), {curve['attack']['name']}")
    ax.set_title(f"{Path(curve['run_dir']).name}: {curve['method']} ({curve['init']}), weight interpolation",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_curve(folder: str | Path, curve: dict) -> list[Path]:
    """curve.csv, curve.json and curve.png in `folder` (made here); a file already there is OutputExists."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f for f in FILES]
    if existing := [p for p in paths if p.exists()]:
        raise OutputExists(f"{existing[0]} exists; roli does not overwrite results: give another --out")
    atomic_write_text(paths[0], curve_csv(curve))
    atomic_write_json(paths[1], curve)
    plot_curve(curve, paths[2])
    return paths
