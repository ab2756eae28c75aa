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

from roli.errors import ResultsError
from roli.evaluation.checks import check_ordering
from roli.files import atomic_write_text, read_json, write_atomic

log = logging.getLogger(__name__)

COLUMNS = ["run", "method", "init", "backbone", "data", "eps", "selected_epoch", "val_clean", "val_robust",
           "test_clean", "test_pgd", "test_aa", "aa_version", "aa_n", "seconds"]
AA_COLUMNS = ("test_aa", "aa_version", "aa_n")  # shown only when some run has an AutoAttack number
PLOTS = {"scatter": "report_scatter.png", "eps": "report_eps.png", "curves": "report_val_curves.png"}
EPS_TOL = 1e-9  # eps values compared across results.json and eval JSONs


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


def _number(v: object) -> float:
    """0.0313... or "8/255" (as written in YAML) -> float."""
    if isinstance(v, str) and "/" in v:
        num, den = v.split("/", 1)
        return float(num) / float(den)
    return float(v)


def _threat_of(settings: object) -> tuple[str, float] | None:
    if isinstance(settings, dict) and settings.get("norm") is not None and settings.get("eps") is not None:
        return str(settings["norm"]).lower(), _number(settings["eps"])
    return None


def run_threat(results: dict) -> tuple[str, float]:
    """A run's threat model (norm, eps) from its results.json: `config.threat` (current layout), else
    `config.attack` (older results.json), else the test attack."""
    cfg = results.get("config") or {}
    for settings in (cfg.get("threat"), cfg.get("attack"), (results.get("test") or {}).get("attack")):
        if (threat := _threat_of(settings)) is not None:
            return threat
    raise ValueError(f"results.json of {results.get('run_dir', '?')} holds no threat model (config.threat or "
                     "config.attack with norm and eps)")


def eval_threats(ev: dict, attack: str | None = None) -> list[tuple[str, float]]:
    """The threat models an eval JSON states: its top-level `threat` and the settings of `attack`, or with
    `attack` None, of its main `attack` and of every attack in `attacks`."""
    attacks = ev.get("attacks") or {}
    sources = [ev.get("threat"), *([attacks.get(attack)] if attack else [ev.get("attack"), *attacks.values()])]
    return [t for s in sources if (t := _threat_of(s)) is not None]


def _same_threat(a: tuple[str, float], b: tuple[str, float]) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) <= EPS_TOL


def on_threat(ev: dict, threat: tuple[str, float], data: str, attack: str | None = None) -> bool:
    """True if `ev` evaluated the run's own test split (dataset `data`) on the run's threat model: every threat
    model it states (see `eval_threats`) has the run's norm and eps, and it states at least one."""
    split = ev.get("data") or {}
    claims = eval_threats(ev, attack)
    return (split.get("split") == "test" and split.get("name") == data and bool(claims)
            and all(_same_threat(c, threat) for c in claims))


def _has(ev: dict, want: str) -> bool:
    return bool(ev.get("sweep")) if want == "sweep" else want in (ev.get("results") or {})


def _aa_version(ev: dict) -> str | None:
    return ((ev.get("attacks") or {}).get("autoattack") or {}).get("version")


def _rank(ev: dict) -> tuple:
    """Preference among evaluations on the run's threat model: standard AutoAttack over other versions (or none),
    then more images, then newer."""
    results = ev.get("results") or {}
    if "autoattack" in results:
        n = results["autoattack"].get("n") or 0
    else:
        n = max((r.get("n") or 0 for r in results.values() if isinstance(r, dict)), default=0)
    return _aa_version(ev) == "standard", n, ev.get("started", "")


def _best(evals: list[dict], want: str, threat: tuple[str, float], data: str) -> dict | None:
    """The preferred (see `_rank`) evaluation on the run's test split and threat model that has `want`: an
    attack's result (e.g. "autoattack", judged by that attack's settings) or a "sweep"."""
    hits = [e for e in evals if _has(e, want) and on_threat(e, threat, data, None if want == "sweep" else want)]
    return max(hits, key=_rank) if hits else None


def _describe(ev: dict, attack: str | None = None) -> dict:
    split = ev.get("data") or {}
    claims = eval_threats(ev, attack)
    return {"file": ev["file"], "data": split.get("name"), "split": split.get("split"),
            "threat": ", ".join(sorted({f"{n} eps {_eps(e)}" for n, e in claims})) or "no threat model stated"}


def collect(run_dirs: list[Path]) -> list[dict]:
    """One row per complete run. Its AutoAttack number comes from the preferred `roli eval` JSON (see `_rank`) on
    the run's test split and threat model; other AutoAttack JSONs are listed under `aa_ignored`."""
    rows = []
    for d in run_dirs:
        path = Path(d) / "results.json"
        res = read_json(path, "results.json")
        if not isinstance(res, dict) or res.get("status") != "complete":
            continue
        try:
            rows.append(_row(Path(d), res))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"key {e.args[0]!r} is missing" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise ResultsError(f"{path}: not a complete roli results.json ({what}); was it written by another tool "
                               "or edited? Move it out of the folders given to the report") from None
    return rows


def _row(d: Path, res: dict) -> dict:
    """The report row of one complete run."""
    cfg = res["config"]
    norm, eps = threat = run_threat(res)
    evals = eval_results(d)
    aa = _best(evals, "autoattack", threat, cfg["data"]["name"])
    ignored = [_describe(e, "autoattack") for e in evals if _has(e, "autoattack")
               and not on_threat(e, threat, cfg["data"]["name"], "autoattack")]
    for i in ignored:
        log.log(logging.INFO if aa else logging.WARNING,
                "report: %s: ignoring AutoAttack in %s (%s %s, %s): the run is %s eps %s on its %s test split",
                Path(d).name, i["file"], i["data"], i["split"], i["threat"], norm, _eps(eps), cfg["data"]["name"])
    aa_res = aa["results"]["autoattack"] if aa else {}
    return {
        "run": Path(d).name, "method": res["method"], "init": res["init"], "backbone": cfg["backbone"]["name"],
        "data": cfg["data"]["name"], "norm": norm, "eps": eps,
        "selected_epoch": res["selected_epoch"], "val_clean": res["best_val"]["clean"],
        "val_robust": res["best_val"]["robust"], "test_clean": res["test"]["clean"],
        "test_pgd": res["test"]["pgd"], "test_aa": aa_res.get("acc"),
        "seconds": res["seconds"], "pgd_steps": res["test"]["attack"]["steps"], "n_test": res["test"]["n"],
        "aa_n": aa_res.get("n"), "aa_version": _aa_version(aa) if aa else None,
        "aa_seconds": aa_res.get("seconds"), "aa_file": aa["file"] if aa else None, "aa_ignored": ignored,
    }


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
             "aa_version": "AA version", "aa_n": "AA n", "seconds": "seconds"}
    cols = [c for c in COLUMNS if c not in AA_COLUMNS or any(r["test_aa"] is not None for r in rows)]
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
        versions = "/".join(sorted({str(r["aa_version"]) for r in aa}))
        sizes = "/".join(sorted({str(r["aa_n"]) for r in aa}, key=lambda n: (len(n), n)))
        times = ", ".join(f"{r['run']} {r['aa_seconds']:.0f} s" for r in aa if r["aa_seconds"] is not None) or "–"
        text += (f"AA = AutoAttack ({versions}) from `roli eval` on {sizes} test images, on each run's own norm and "
                 f"eps (standard version preferred, then more images, then newest); wall time {times}.\n")
    ignored = [f"{r['run']}: {i['file']} ({i['data']} {i['split']}, {i['threat']})" for r in rows
               for i in r["aa_ignored"]]
    if ignored:
        text += ("AutoAttack evaluations ignored (not on the run's test split and threat model): "
                 + "; ".join(ignored) + ".\n")
    return text


def sanity(rows: list[dict], run_dirs: list[Path]) -> str:
    """One line per run: its `roli eval` checks, plus clean >= PGD >= AA on the table's own numbers.

    Per suite, the checks of one eval JSON: the preferred one (see `_rank`) among those on the run's test split
    and threat model (every attack in it at the run's norm and eps); the others are not shown."""
    by_name = {Path(d).name: Path(d) for d in run_dirs}
    lines = ["## Sanity checks", ""]
    for r in rows:
        best: dict = {}
        for e in eval_results(by_name[r["run"]]):
            if on_threat(e, (r["norm"], r["eps"]), r["data"]):
                suite = e.get("suite")
                best[suite] = max(best.get(suite, e), e, key=_rank)
        checks = [dict(c, file=e["file"]) for e in best.values() for c in e.get("checks", [])]
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
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


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
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _html(text: str, out: Path, pngs: list[str]) -> None:
    """report.md's text in <pre>, the PNGs embedded: one file to mail or attach."""
    imgs = "".join(f'<p><img alt="{p}" src="data:image/png;base64,{base64.b64encode((out / p).read_bytes()).decode()}">'
                   "</p>" for p in pngs)
    atomic_write_text(out / "report.html", f"<!doctype html><meta charset='utf-8'><title>roli report</title>"
                                           f"<pre>{html.escape(text)}</pre>{imgs}\n")


def write_report(out: Path, run_dirs: list[Path]) -> Path:
    """Write report.md, report.csv, the PNG plots and report.html into `out` (derived files, regenerated)."""
    out = Path(out)
    rows = collect(run_dirs)  # first: an unreadable results.json leaves the previous report as it was
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*PLOTS.values(), "report.csv", "report.html"]:
        (out / stale).unlink(missing_ok=True)
    text = "# roli report\n\n" + (markdown(rows) if rows else "No complete runs.\n")
    pngs = []
    if rows:
        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows({**r, "aa_ignored": ";".join(i["file"] for i in r["aa_ignored"])} for r in rows)

        write_atomic(out / "report.csv", write_csv)
        dirs = {Path(d).name: Path(d) for d in run_dirs}
        scatter(rows, out / PLOTS["scatter"])
        pngs.append(PLOTS["scatter"])
        sweeps = {r["run"]: s for r in rows
                  if (s := _best(eval_results(dirs[r["run"]]), "sweep", (r["norm"], r["eps"]), r["data"]))}
        if sweeps:
            eps_curves(sweeps, out / PLOTS["eps"])
            pngs.append(PLOTS["eps"])
        histories = {r["run"]: h for r in rows
                     if (h := read_json(dirs[r["run"]] / "results.json", "results.json").get("history"))}
        if histories:
            val_curves(histories, {r["run"]: r["selected_epoch"] for r in rows}, out / PLOTS["curves"])
            pngs.append(PLOTS["curves"])
        captions = {PLOTS["scatter"]: "clean vs robust", PLOTS["eps"]: "accuracy vs eps",
                    PLOTS["curves"]: "validation curves"}
        text += "\n" + "".join(f"![{captions[p]}]({p})\n" for p in pngs)
        text += "\n" + sanity(rows, run_dirs)
        _html(text, out, pngs)
    atomic_write_text(out / "report.md", text)
    return out / "report.md"
