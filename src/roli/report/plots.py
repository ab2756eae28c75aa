"""The report's figures (matplotlib, Agg, imported lazily): the paper's Fig. 1-style clean-vs-robust scatter over
seed groups, validation curves per epoch, and accuracy vs eps from `roli eval --suite sweep`.
"""

from __future__ import annotations

from pathlib import Path

from roli.files import write_atomic
from roli.report.groups import summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _series_name(method: str, variant: str) -> str:
    return method + (f" ({variant})" if variant else "")


def _colours(gs: list[dict]) -> dict[tuple[str, str], str]:
    """One colour per method (and variant), the same in every figure."""
    return {s: f"C{i % 10}" for i, s in enumerate(_unique((g["method"], g["variant"]) for g in gs))}


def _panels(plt, n: int, width: float, height: float):
    """A figure with `n` panels, at most 3 a row; the unused ones hidden."""
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(plt, fig, path: Path, legend: list) -> None:
    """Legend to the right of the panels (never over the points), saved tight as a PNG."""
    fig.legend(handles=legend, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight"))
    plt.close(fig)


def _init_handles(hollow_label: str = "RanLI", filled_label: str = "RoLI") -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], marker="o", ls="none", mfc="white", mec="0.3", ms=8, label=hollow_label),
            Line2D([], [], marker="o", ls="none", mfc="0.3", mec="0.3", ms=8, label=filled_label)]


def _series_handles(colours: dict) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=c, label=_series_name(*s)) for s, c in colours.items()]


def scatter(gs: list[dict], path: Path, pgd: str = "PGD", threat: str = "") -> str:
    """Test clean vs robust accuracy per group (AutoAttack when every group has it, else `pgd`): hollow RanLI,
    filled RoLI, error bars = std over seeds, an arrow from each method's RanLI to its RoLI; one panel per
    (backbone, dataset). Returns the robust accuracy's name, for the caption."""
    plt = _pyplot()
    robust, name = ("test_aa", "AutoAttack") if all(g["stats"]["test_aa"]["mean"] is not None for g in gs) \
        else ("test_pgd", pgd)
    colours = _colours(gs)
    panels = _unique((g["backbone"], g["data"]) for g in gs)
    fig, axes = _panels(plt, len(panels), 5.0, 4.3)
    for ax, (backbone, data) in zip(axes, panels):
        points = {}
        for g in (g for g in gs if (g["backbone"], g["data"]) == (backbone, data)):
            x, y, c = g["stats"]["test_clean"], g["stats"][robust], colours[g["method"], g["variant"]]
            marker = "o" if g["init"] in ("ranli", "roli") else "s"  # other inits: squares
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt=marker, ms=9, mec=c, mew=1.8,
                        mfc="white" if g["init"] == "ranli" else c, ecolor=c, elinewidth=1, capsize=3, zorder=3)
            points[g["method"], g["variant"], g["init"]] = (x["mean"], y["mean"])
        for (method, variant), c in colours.items():
            start, end = points.get((method, variant, "ranli")), points.get((method, variant, "roli"))
            if start and end:
                ax.annotate("", xy=end, xytext=start, zorder=2,
                            arrowprops={"arrowstyle": "-|>", "color": c, "lw": 1.4, "alpha": 0.7, "shrinkA": 7,
                                        "shrinkB": 7})
        ax.set_title(f"{backbone} · {data}", fontsize=10)
        ax.set_xlabel("test clean accuracy (%)")
        ax.set_ylabel(f"test {name} accuracy (%)" + (f", {threat}" if threat else ""))
        ax.grid(alpha=0.3)
        ax.margins(0.12)
    _save(plt, fig, path, _series_handles(colours) + _init_handles())
    return name


def val_curves(gs: list[dict], rows: list[dict], path: Path) -> None:
    """Validation robust (dark) and clean (light) accuracy per epoch, mean over a group's seeds (±std shaded from
    two seeds on), RanLI solid, RoLI dashed, a star at each seed's selected epoch; one panel per (backbone,
    dataset). Shows whether training converged and where selection stopped."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    by_dir = {r["run_dir"]: r for r in rows}
    gs = [g for g in gs if any(by_dir[s["run_dir"]]["history"] for s in g["per_seed"])]
    colours = _colours(gs)
    panels = _unique((g["backbone"], g["data"]) for g in gs)
    fig, axes = _panels(plt, len(panels), 5.5, 4.3)
    for ax, (backbone, data) in zip(axes, panels):
        for g in (g for g in gs if (g["backbone"], g["data"]) == (backbone, data)):
            runs = [by_dir[s["run_dir"]] for s in g["per_seed"]]
            c, ls = colours[g["method"], g["variant"]], "--" if g["init"] == "roli" else "-"
            for key, alpha, lw in (("val_clean", 0.35, 1.2), ("val_robust", 1.0, 1.8)):
                epochs = sorted({h["epoch"] for r in runs for h in r["history"] if h.get(key) is not None})
                stats = [summary([h.get(key) for r in runs for h in r["history"] if h["epoch"] == e])
                         for e in epochs]
                mean = [s["mean"] for s in stats]
                ax.plot(epochs, mean, color=c, ls=ls, lw=lw, alpha=alpha)
                if g["n"] >= 2:
                    std = [s["std"] or 0.0 for s in stats]
                    ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                    color=c, alpha=0.15 * alpha, lw=0)
            ax.plot([r["selected_epoch"] for r in runs], [r["val_robust"] for r in runs], ls="none", marker="*",
                    ms=12, color=c, mec="black", mew=0.5, zorder=4)
        ax.set_title(f"{backbone} · {data}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    styles = [Line2D([], [], color="0.3", lw=1.2, ls="-", label="RanLI"),
              Line2D([], [], color="0.3", lw=1.2, ls="--", label="RoLI"),
              Line2D([], [], color="0.1", lw=2.6, label="robust (PGD): dark"),
              Line2D([], [], color="0.3", lw=2.6, alpha=0.35, label="clean: light"),
              Line2D([], [], color="0.3", ls="none", marker="*", ms=11, mec="black", mew=0.5,
                     label="selected epoch")]
    _save(plt, fig, path, _series_handles(colours) + styles)


def eps_curves(sweeps: dict[str, dict], path: Path) -> None:
    """Accuracy vs eps, one line per run (from `roli eval --suite sweep`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, ev in sweeps.items():
        pts = sorted(ev["sweep"], key=lambda p: p["eps"])
        ax.plot([p["eps"] for p in pts], [p["acc"] for p in pts], marker="o", label=name)
    first = next(iter(sweeps.values()))
    pgd, threat = first["attacks"]["sweep"], first.get("threat") or first["attacks"]["sweep"]  # 0.1 files: in attack
    ax.axvline(threat["eps"], color="gray", linestyle="--", linewidth=1, label=f"eval eps {threat['eps']:.4g}")
    ax.set_xlabel(f"eps ({threat['norm']}, [0,1] pixel units)")
    ax.set_ylabel(f"PGD-{pgd['steps']} accuracy (%)")
    ax.set_title("accuracy vs eps (should fall to ~0)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
