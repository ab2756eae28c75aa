"""Writing a report: report.md, report.csv, report_groups.csv, report.json, the PNG figures, report.html and (with
a findings spec) findings.json into one folder, all derived and regenerated; and `archive`, the runs' small files
to commit beside it, from which `roli report` regenerates it byte for byte.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from roli.errors import ResultsError
from roli.files import atomic_write_json, atomic_write_text, locked, read_json, write_atomic
from roli.report import plots
from roli.report.collect import collect
from roli.report.groups import METRICS, groups
from roli.report.html import write_html
from roli.report.markdown import report_markdown
from roli.report.tables import settings, unique

# row fields for the report itself, not the CSV or JSON (report.json of archived runs stays as it was)
INTERNAL = ("config", "history", "checks", "sweep", "pretrain_threat", "threat_mismatch", "integrity",
            "aa_substitutions")
PLOTS = {"scatter": "report_scatter.png", "curves": "report_val_curves.png", "eps": "report_eps.png"}
CAPTIONS = {"scatter": "test clean vs {robust} accuracy per group: hollow RanLI -> filled RoLI, bars = std over seeds",
            "curves": "validation accuracy per epoch, mean over seeds (shaded ±std), * = selected epochs",
            "eps": "accuracy vs eps per run (roli eval --suite sweep)"}
DERIVED = ["report.md", "report.csv", "report_groups.csv", "report.json", "report.html", "findings.json",
           *PLOTS.values()]
ARCHIVED = ("results.json", "config.yaml", "metrics.csv", "eval-*.json", "test_predictions.npz")  # what `archive` keeps


def findings_of(gs: list[dict], spec: dict) -> dict:
    """The paper's findings tested on these groups (see `findings`): each group's per-seed numbers under its label."""
    from roli.report.findings import findings  # numpy + scipy: only when there are findings

    return findings({g["label"]: g["per_seed"] for g in gs}, spec)


def _group_record(g: dict) -> dict:
    """A group as one report_groups.csv line: identity, n, seeds, and mean/std (and n for AA) per metric."""
    out = {k: g[k] for k in ("label", "backbone", "data", "method", "init", "variant", "norm", "eps", "n")}
    out["seeds"] = ";".join(map(str, g["seeds"]))
    for m in METRICS:
        out[f"{m}_mean"], out[f"{m}_std"] = g["stats"][m]["mean"], g["stats"][m]["std"]
    out["test_aa_n"] = g["stats"]["test_aa"]["n"]
    return out


def _write_csv(path: Path, records: list[dict]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)

    write_atomic(path, write)


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in INTERNAL}


def aggregate(run_dirs: list[Path]) -> dict:
    """The report's numbers as plain data (what report.json holds): settings, groups with their per-seed values
    (see `groups.groups`) and the per-run rows."""
    return _data(collect(run_dirs))


def _data(rows: list[dict]) -> dict:
    return {"settings": settings(rows) if rows else {}, "groups": groups(rows), "runs": [_public(r) for r in rows]}


def archive(run_dirs: list[Path], dest: Path) -> list[Path]:
    """Copy each complete run's small files (ARCHIVED: results, config, metrics, eval JSONs, per-example test
    predictions; never checkpoints) to `dest/<run name>/`: a record to commit beside a report, from which
    `roli report dest` regenerates it. Returns
    the copies' folders; files already there are refreshed, others left alone."""
    complete = [Path(d) for d in run_dirs if (read_json(Path(d) / "results.json", "results.json") or {}).get(
        "status") == "complete"]
    names = [d.name for d in complete]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ResultsError(f"two runs are named {twice[0]!r} ({', '.join(str(d) for d in complete if d.name == twice[0])}); "
                           "archive them into separate folders")
    out = []
    for d in complete:
        target = Path(dest) / d.name
        if target.resolve() == d.resolve():
            out.append(d)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for pattern in ARCHIVED:
            for f in sorted(d.glob(pattern)):
                write_atomic(target / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
        out.append(target)
    return out


def write_report(out: Path, run_dirs: list[Path], spec: dict | None = None, doc: Path | None = None) -> Path:
    """Write report.md, report.csv, report_groups.csv, report.json, the PNG plots and report.html into `out`
    (derived files, regenerated). With a findings `spec` (see `findings.load_spec`) also findings.json and the
    findings in report.md/html; with `doc`, a copy of report.md there (figure links relative to it)."""
    out = Path(out)
    with locked(out / ".report.lock"):  # two runs (or sweep shards) finishing together write one report in turn
        return _write_report(out, run_dirs, spec, doc)


def _write_report(out: Path, run_dirs: list[Path], spec: dict | None, doc: Path | None) -> Path:
    """`write_report` under its lock."""
    rows = collect(run_dirs)  # first: an unreadable results.json leaves the previous report as it was
    out.mkdir(parents=True, exist_ok=True)
    for stale in DERIVED:
        (out / stale).unlink(missing_ok=True)
    if not rows:
        atomic_write_text(out / "report.md", "# roli report\n\nNo complete runs.\n")
        return out / "report.md"
    data = _data(rows)
    gs = data["groups"]
    _write_csv(out / "report.csv", [{**_public(r), "aa_ignored": ";".join(i["file"] for i in r["aa_ignored"])}
                                    for r in rows])
    _write_csv(out / "report_groups.csv", [_group_record(g) for g in gs])
    atomic_write_json(out / "report.json", data)
    steps = "/".join(map(str, unique(r["pgd_steps"] for r in rows)))
    robust = plots.scatter(gs, out / PLOTS["scatter"], pgd=f"PGD-{steps}", threat=data["settings"]["threat"])
    figures = {"scatter": (PLOTS["scatter"], CAPTIONS["scatter"].format(robust=robust))}
    if any(r["history"] for r in rows):
        plots.val_curves(gs, rows, out / PLOTS["curves"])
        figures["curves"] = (PLOTS["curves"], CAPTIONS["curves"])
    sweeps = {r["run"]: r["sweep"] for r in rows if r["sweep"]}
    if sweeps:
        plots.eps_curves(sweeps, out / PLOTS["eps"])
        figures["eps"] = (PLOTS["eps"], CAPTIONS["eps"])
    found = findings_of(gs, spec) if spec is not None else None
    if found:
        atomic_write_json(out / "findings.json", found)
    write_html(out / "report.html", rows, gs, figures, found)
    atomic_write_text(out / "report.md", report_markdown(rows, gs, figures, found))
    if doc is not None:
        doc = Path(doc)
        links = Path(os.path.relpath(out.resolve(), doc.parent.resolve())).as_posix() + "/"
        doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(doc, report_markdown(rows, gs, figures, found, links=links))
    return out / "report.md"


def read_report(out: Path) -> str:
    """report.md of `out`, read under the report's lock: another process may be rewriting it right now."""
    with locked(Path(out) / ".report.lock"):
        return (Path(out) / "report.md").read_text()
