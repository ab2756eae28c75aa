"""Collect runs' results.json (and the `roli eval` JSONs beside them) into a report: per-run and per-group (over
seeds) CSVs, report.json, report.md with the paper's table shape, PNG plots (see `plots`) and a self-contained HTML
page (see `report_html`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from roli.errors import ResultsError
from roli.evaluation.checks import check_ordering
from roli.evaluation.groups import METRICS, dataset_label, groups
from roli.files import atomic_write_json, atomic_write_text, read_json, write_atomic

log = logging.getLogger(__name__)

COLUMNS = ["run", "method", "init", "backbone", "data", "eps", "selected_epoch", "val_clean", "val_robust",
           "test_clean", "test_pgd", "test_aa", "aa_version", "aa_n", "seconds"]
AA_COLUMNS = ("test_aa", "aa_version", "aa_n")  # shown only when some run has an AutoAttack number
INTERNAL = ("config", "history", "checks", "sweep")  # row fields for the report itself, not the CSV or JSON
PLOTS = {"scatter": "report_scatter.png", "curves": "report_val_curves.png", "eps": "report_eps.png"}
CAPTIONS = {"scatter": "test clean vs {robust} accuracy per group: hollow RanLI -> filled RoLI, bars = std over seeds",
            "curves": "validation accuracy per epoch, mean over seeds (shaded ±std), * = selected epochs",
            "eps": "accuracy vs eps per run (roli eval --suite sweep)"}
DERIVED = ["report.md", "report.csv", "report_groups.csv", "report.json", "report.html", "findings.json",
           *PLOTS.values()]
INITS = {"ranli": "RanLI", "roli": "RoLI"}
PAPER_METHODS = ("linear_probe", "full_finetune", "lora", "adapter", "bitfit", "vpt_deep")  # the paper's row order
TABLE_METRICS = (("test_clean", "clean"), ("test_pgd", "PGD"), ("test_aa", "AA"))
RESULTS_NOTE = ("Test accuracy in %, mean ± sample std over seeds (std from 2 seeds on); n = seeds; AA over the seeds "
                "that have an AutoAttack evaluation on the run's threat model and test split (n= when fewer).")
PER_INIT_NOTE = "Set per init, not a variant (e.g. a learning rate tuned for each method x init, as in the paper)"
ARCHIVED = ("results.json", "config.yaml", "metrics.csv", "eval-*.json")  # what `archive` keeps of a run
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


def _attack_name(attack: dict) -> str:
    """PGD-10 (step 2/255): how the settings line names an attack."""
    name = str(attack.get("name", "?")).upper() + (f"-{attack['steps']}" if attack.get("steps") else "")
    extra = [f"step {_eps(attack['step_size'])}"] if attack.get("step_size") is not None else []
    extra += [f"{attack['restarts']} restarts"] if (attack.get("restarts") or 1) > 1 else []
    return name + (f" ({', '.join(extra)})" if extra else "")


def _checks(evals: list[dict], threat: tuple[str, float], data: str) -> list[dict]:
    """Per suite, the checks of the preferred (see `_rank`) eval JSON on the run's test split and threat model."""
    best: dict = {}
    for e in evals:
        if on_threat(e, threat, data):
            best[e.get("suite")] = max(best.get(e.get("suite"), e), e, key=_rank)
    return [dict(c, file=e["file"]) for e in best.values() for c in e.get("checks", [])]


def _row(d: Path, res: dict) -> dict:
    """The report row of one complete run."""
    cfg = res["config"]
    data = cfg["data"]["name"]
    norm, eps = threat = run_threat(res)
    evals = eval_results(d)
    aa = _best(evals, "autoattack", threat, data)
    ignored = [_describe(e, "autoattack") for e in evals if _has(e, "autoattack")
               and not on_threat(e, threat, data, "autoattack")]
    for i in ignored:
        log.log(logging.INFO if aa else logging.WARNING,
                "report: %s: ignoring AutoAttack in %s (%s %s, %s): the run is %s eps %s on its %s test split",
                Path(d).name, i["file"], i["data"], i["split"], i["threat"], norm, _eps(eps), data)
    aa_res = aa["results"]["autoattack"] if aa else {}
    checks = _checks(evals, threat, data)
    if aa and aa_res.get("n") == res["test"]["n"]:
        checks.append({**check_ordering({"clean": res["test"]["clean"], "pgd": res["test"]["pgd"],
                                         "autoattack": aa_res["acc"]}).to_dict(), "file": "the report's numbers"})
    train = cfg.get("train") or {}
    return {
        "run": Path(d).name, "method": res["method"], "init": res["init"], "backbone": cfg["backbone"]["name"],
        "data": data, "dataset": dataset_label(cfg), "seed": (cfg.get("run") or {}).get("seed", res.get("seed")),
        "norm": norm, "eps": eps,
        "selected_epoch": res["selected_epoch"], "val_clean": res["best_val"]["clean"],
        "val_robust": res["best_val"]["robust"], "test_clean": res["test"]["clean"],
        "test_pgd": res["test"]["pgd"], "test_aa": aa_res.get("acc"),
        "seconds": res["seconds"], "pgd_steps": res["test"]["attack"]["steps"], "n_test": res["test"]["n"],
        "train_attack": _attack_name(cfg["attack"]) if train.get("adversarial", True) else "none (clean training)",
        "eval_attack": _attack_name(res["test"]["attack"]),
        "eval_precision": ((res.get("precision") or {}).get("eval") or {}).get("used"),
        "aa_n": aa_res.get("n"), "aa_version": _aa_version(aa) if aa else None,
        "aa_attacks": ",".join(aa["attacks"]["autoattack"].get("attacks") or []) if aa else None,
        "aa_seconds": aa_res.get("seconds"), "aa_file": aa["file"] if aa else None, "aa_ignored": ignored,
        "epochs": train.get("epochs"), "device": res.get("device"),
        "run_dir": str(d), "config": cfg, "history": res.get("history") or [], "checks": checks,
        "sweep": _best(evals, "sweep", threat, data),
    }


def _eps(v: float) -> str:
    """8/255 rather than 0.03: eps values are usually k/255."""
    k = round(v * 255)
    return f"{k}/255" if k and abs(v * 255 - k) < 1e-3 else f"{v:.4g}"


def _cell(v: object, column: str = "") -> str:
    if column == "eps":
        return _eps(v)
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def run_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The per-run table: header and cells (AutoAttack columns only when some run has a number)."""
    steps = sorted({r["pgd_steps"] for r in rows})
    names = {"run": "run", "method": "method", "init": "init", "backbone": "backbone", "data": "data", "eps": "eps",
             "selected_epoch": "epoch", "val_clean": "val clean", "val_robust": "val PGD",
             "test_clean": "test clean", "test_pgd": f"test PGD-{'/'.join(map(str, steps))}", "test_aa": "test AA",
             "aa_version": "AA version", "aa_n": "AA n", "seconds": "seconds"}
    cols = [c for c in COLUMNS if c not in AA_COLUMNS or any(r["test_aa"] is not None for r in rows)]
    return [names[c] for c in cols], [[_cell(r[c], c) for c in cols] for r in rows]


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def settings(rows: list[dict]) -> dict[str, str]:
    """The settings behind the tables, each as one string (values that differ between runs joined by " / ")."""
    def joined(values) -> str:
        return " / ".join(map(str, _unique(v for v in values if v is not None))) or "–"

    out = {"threat": joined(f"{r['norm']} eps {_eps(r['eps'])}" for r in rows),
           "training attack": joined(r["train_attack"] for r in rows),
           "evaluation attack": joined(r["eval_attack"] for r in rows),
           "eval precision": joined(r["eval_precision"] for r in rows),
           "test images": joined(sorted({r["n_test"] for r in rows}))}
    aa = [r for r in rows if r["test_aa"] is not None]
    if aa:
        out["AutoAttack"] = joined(f"{r['aa_version']}" + (f" ({r['aa_attacks'].replace(',', ', ')})"
                                                            if r["aa_attacks"] else "") + f" on {r['aa_n']} images"
                                   for r in aa)
    return out


def _stat(g: dict | None, metric: str) -> str:
    """A paper-table cell: "mean ± std" (std from two seeds on); AutoAttack says its n when seeds lack one."""
    if g is None:
        return "–"
    if metric == "n":
        return str(g["n"])
    s = g["stats"][metric]
    if s["mean"] is None:
        return "–"
    text = f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")
    return text + (f" (n={s['n']})" if s["n"] != g["n"] else "")


def paper_tables(gs: list[dict]) -> list[dict]:
    """One table per backbone in the paper's shape: a row per method in the paper's order (then others as they come;
    its variants after it), columns dataset × init × {clean, PGD, AA} plus n (seeds); a column no group fills is left
    out. Each: backbone, columns [(dataset, init, metric)], rows [{method, variant, cells}], notes (the settings
    that differ between a row's inits)."""
    tables = []
    for backbone in _unique(g["backbone"] for g in gs):
        mine = [g for g in gs if g["backbone"] == backbone]
        present = _unique(g["init"] for g in mine)
        inits = [i for i in INITS if i in present] + [i for i in present if i not in INITS]
        cols = []
        for data in _unique(g["data"] for g in mine):
            for init in inits:
                here = [g for g in mine if (g["data"], g["init"]) == (data, init)]
                cols += [(data, init, m) for m, _ in TABLE_METRICS if any(g["stats"][m]["n"] for g in here)]
                cols += [(data, init, "n")] if here else []
        cell = {(g["method"], g["variant"], g["data"], g["init"]): g for g in mine}
        seen = _unique(g["method"] for g in mine)
        methods = [m for m in PAPER_METHODS if m in seen] + [m for m in seen if m not in PAPER_METHODS]
        keys = sorted(_unique((g["method"], g["variant"]) for g in mine), key=lambda k: (methods.index(k[0]), k[1] != ""))
        rows = [{"method": m, "variant": v, "cells": [_stat(cell.get((m, v, d, i)), k) for d, i, k in cols]}
                for m, v in keys]
        notes = []
        for r in rows:
            for d in _unique(g["data"] for g in mine):
                tuned = [(i, g) for i in inits if (g := cell.get((r["method"], r["variant"], d, i))) and g["per_init"]]
                if len(tuned) >= 2:  # a setting that differs between this row's inits
                    notes.append(f"{row_name(r)} on {d}: " + " / ".join(f"{g['per_init']} ({INITS.get(i, i)})"
                                                                         for i, g in tuned))
        tables.append({"backbone": backbone, "columns": cols, "rows": rows, "notes": notes})
    return tables


def column_name(metric: str) -> str:
    """clean / PGD / AA / n: a paper-table column's metric as shown."""
    return dict(TABLE_METRICS).get(metric, metric)


def aa_notes(rows: list[dict]) -> list[str]:
    """Where the AutoAttack numbers come from, and which AutoAttack evaluations were ignored and why."""
    notes = []
    aa = [r for r in rows if r["test_aa"] is not None]
    if aa:
        versions = "/".join(sorted({str(r["aa_version"]) for r in aa}))
        sizes = "/".join(sorted({str(r["aa_n"]) for r in aa}, key=lambda n: (len(n), n)))
        secs = sorted(r["aa_seconds"] for r in aa if r["aa_seconds"] is not None)
        times = (f"{secs[0]:.0f} s" if len(secs) == 1 else f"{secs[0]:.0f}–{secs[-1]:.0f} s per run, "
                 f"{sum(secs):.0f} s in all") if secs else "–"
        notes.append(f"AA = AutoAttack ({versions}) from `roli eval` on {sizes} test images, on each run's own norm "
                     f"and eps (standard version preferred, then more images, then newest); wall time {times}.")
    ignored = [f"{r['run']}: {i['file']} ({i['data']} {i['split']}, {i['threat']})" for r in rows
               for i in r["aa_ignored"]]
    if ignored:
        notes.append("AutoAttack evaluations ignored (not on the run's test split and threat model): "
                     + "; ".join(ignored) + ".")
    return notes


def sanity(gs: list[dict], rows: list[dict]) -> list[dict]:
    """Per group, the checks of its runs (see `_checks`, plus clean >= PGD >= AA on the report's numbers): each
    failure, how many passed, and the runs not checked yet. Each: label, runs, checked, passed, failed, unchecked."""
    by_dir = {r["run_dir"]: r for r in rows}
    out = []
    for g in gs:
        runs = [by_dir[s["run_dir"]] for s in g["per_seed"]]
        checked = [r for r in runs if r["checks"]]
        out.append({"label": g["label"], "runs": len(runs), "checked": len(checked),
                    "passed": sum(c["passed"] for r in checked for c in r["checks"]),
                    "failed": [{"run": r["run"], **c} for r in checked for c in r["checks"] if not c["passed"]],
                    "unchecked": [r["run"] for r in runs if not r["checks"]]})
    return out


def _count(n: int, noun: str) -> str:
    """'1 check', '3 checks'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def sanity_lines(entry: dict) -> list[tuple[bool, str]]:
    """A group's sanity entry as (failed, text) lines: one per failed check, one summary for the rest."""
    lines = [(True, f"{f['run']}: {f['name']} FAILED ({f['file']}): {f['message']}") for f in entry["failed"]]
    if entry["checked"]:
        over = f" over {entry['checked']} runs" if entry["checked"] > 1 else ""
        passed = entry["passed"]
        if entry["failed"]:
            text = f"{_count(passed, 'check')} passed, {len(entry['failed'])} failed{over}"
        else:
            text = (f"the 1 check passed{over}" if passed == 1 else f"all {passed} checks passed{over}")
        if entry["unchecked"]:
            text += f"; no checks yet for {', '.join(entry['unchecked'])}"
        lines.append((False, f"{entry['label']}: {text}"))
    else:
        runs = entry["unchecked"]
        which = f"`roli eval --checkpoint {runs[0]}/best.pt --suite full`" + (
            f" for each of its {len(runs)} runs" if len(runs) > 1 else "")
        lines.append((False, f"{entry['label']}: no checks yet (run {which})"))
    return lines


def cost_table(gs: list[dict], rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """Wall time per group and in all (training + test, and AutoAttack apart), with the machines it was measured on:
    what a user sizes a larger run from. Returns header, body and notes."""
    by_dir = {r["run_dir"]: r for r in rows}
    body, total, aa_total = [], 0.0, 0.0
    for g in gs:
        runs = [by_dir[s["run_dir"]] for s in g["per_seed"]]
        secs = [r["seconds"] for r in runs]
        aa = [r["aa_seconds"] for r in runs if r["aa_seconds"] is not None]
        epochs = _unique(r["epochs"] for r in runs)
        per_epoch = [r["seconds"] / r["epochs"] for r in runs if r["epochs"]]
        total, aa_total = total + sum(secs), aa_total + sum(aa)
        shown = "/".join(str(e) for e in epochs if e is not None) or "–"
        body.append([g["label"], str(len(runs)), shown, f"{sum(secs) / len(secs):.0f}",
                     f"{sum(per_epoch) / len(per_epoch):.1f}" if per_epoch else "–",
                     f"{sum(aa) / len(aa):.0f} (n={len(aa)})" if aa else "–", f"{sum(secs) / 60:.1f}"])
    body.append(["all", str(len(rows)), "", "", "", f"{aa_total / 60:.1f} min in all" if aa_total else "–",
                 f"{total / 60:.1f}"])
    machines = " / ".join(_unique(str(r["device"]) for r in rows if r["device"]))
    where = f"on {machines}" if machines else "(machine not recorded)"
    notes = [f"Wall time of training + validation + test per run (results.json `seconds`) {where}; AutoAttack "
             f"(`roli eval`) apart. In all {(total + aa_total) / 3600:.2f} h. A RoLI run's time includes its stage 1 "
             "only when no earlier run in the same folder provided it (normally the linear-probe run does)."]
    head = ["group", "runs", "epochs", "s per run", "s per epoch", "AA s per run", "minutes in all"]
    return head, body, notes


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table's lines; a `|` in a cell (a run, group, method or dataset name) is escaped as `\\|`, so it
    does not split the cell (findings.md_table does the same for the findings)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(head), "|" + "---|" * len(head), *map(line, body)]


def row_name(row: dict) -> str:
    """A paper-table row's name: the method, and its variant when it has one."""
    return row["method"] + (f" ({row['variant']})" if row["variant"] else "")


def findings_of(gs: list[dict], spec: dict) -> dict:
    """The paper's findings tested on these groups (see `findings`): each group's per-seed numbers under its label."""
    from roli.evaluation.findings import findings

    return findings({g["label"]: g["per_seed"] for g in gs}, spec)


def markdown(rows: list[dict], gs: list[dict], figures: dict[str, tuple[str, str]], found: dict | None = None,
             links: str = "") -> str:
    """report.md: settings, the findings (when a spec was given), the paper-shape tables, the figures, the wall
    time, the sanity checks and the per-run table. `links` prefixes the figure paths (a copy kept elsewhere)."""
    from roli.evaluation import findings

    title = found["spec"]["title"] if found else "roli report"
    text = [f"# {title}", "", "Settings: " + " · ".join(f"{k} {v}" for k, v in settings(rows).items()), ""]
    if found:  # under their own heading, one level lower than findings.markdown() alone puts them (as report.html)
        text += ["## Findings", "", findings.markdown(found, title=False, closing=False, level=3)]
    text += ["## Results", "", RESULTS_NOTE, ""]
    for t in paper_tables(gs):
        head = ["method"] + [f"{d} {INITS.get(i, i)} {column_name(m)}" for d, i, m in t["columns"]]
        text += [f"### {t['backbone']}", "", *_md_table(head, [[row_name(r), *r["cells"]] for r in t["rows"]]), ""]
        text += [f"{PER_INIT_NOTE}: " + "; ".join(t["notes"]) + ".", ""] if t["notes"] else []
    text += [note for n in aa_notes(rows) for note in (n, "")]
    text += ["## Figures", "", *(f"![{caption}]({links}{png})" for png, caption in figures.values()), ""]
    head, body, notes = cost_table(gs, rows)
    text += ["## Wall time", "", *_md_table(head, body), "", *notes, ""]
    text += [found["spec"]["closing"].strip(), ""] if found and found["spec"]["closing"] else []
    text += ["## Sanity checks", ""]
    for entry in sanity(gs, rows):
        text += [f"- **{t}**" if failed else f"- {t}" for failed, t in sanity_lines(entry)]
    head, body = run_table(rows)
    n = "/".join(map(str, sorted({r["n_test"] for r in rows})))
    text += ["", "## Runs", "", *_md_table(head, body), "",
             f"Accuracies in %; test on {n} images; epoch = selected (best validation PGD accuracy).", ""]
    return "\n".join(text)


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
    """Copy each complete run's small files (ARCHIVED: results, config, metrics, eval JSONs; never checkpoints) to
    `dest/<run name>/`: a record to commit beside a report, from which `roli report dest` regenerates it. Returns
    the copies' folders; files already there are refreshed, others left alone."""
    import shutil

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
    from roli.evaluation import plots
    from roli.evaluation.report_html import write_html

    out = Path(out)
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
    steps = "/".join(map(str, _unique(r["pgd_steps"] for r in rows)))
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
    atomic_write_text(out / "report.md", markdown(rows, gs, figures, found))
    if doc is not None:
        doc = Path(doc)
        links = Path(os.path.relpath(out.resolve(), doc.parent.resolve())).as_posix() + "/"
        doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(doc, markdown(rows, gs, figures, found, links=links))
    return out / "report.md"
