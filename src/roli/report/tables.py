"""The report's tables as data (header and rows of formatted cells, plus notes): the settings line, the paper-shape
table per backbone, the per-run table, wall time, AutoAttack notes and the sanity checks per group. The markdown
and HTML renderers lay these out without computing anything.
"""

from __future__ import annotations

from roli.numbers import eps_str

COLUMNS = ["run", "method", "init", "backbone", "pretrain_threat", "data", "eps", "selected_epoch", "val_clean",
           "val_robust",
           "test_clean", "test_pgd", "test_aa", "aa_version", "aa_n", "test_expected", "seconds"]
AA_COLUMNS = ("test_aa", "aa_version", "aa_n")  # shown only when some run has an AutoAttack number
UNKNOWN_PRETRAIN = ("unknown", "not robust")  # the pretrain threat column shows only when some run's is known
INTEGRITY_NOTE = ("Gradient-masking signals from `roli eval --suite full` (roli.evaluation.integrity): PGD-10 vs "
                  "PGD-100 with 5 restarts (flag above 2 points), accuracy over the eps sweep (a rise of more than "
                  "one image, or above 5% at the large eps), PGD-10 vs AutoAttack (flag above 3 points), and for VPT "
                  "whether the attack loss reaches every prompt token (roli's prompts are parameters of the attacked "
                  "model, so white-box PGD differentiates through the prompted forward). A flag is a reason to look.")
INITS = {"ranli": "RanLI", "lp_ft": "LP-FT", "roli": "RoLI"}
PAPER_METHODS = ("linear_probe", "full_finetune", "lora", "adapter", "bitfit", "vpt_deep")  # the paper's row order
TABLE_METRICS = (("test_clean", "clean"), ("test_pgd", "PGD"), ("test_aa", "AA"))
RESULTS_NOTE = ("Test accuracy in %, mean ± sample std over seeds (std from 2 seeds on); n = seeds; AA over the seeds "
                "that have an AutoAttack evaluation on the run's threat model and test split (n= when fewer).")
PER_INIT_NOTE = "Set per init, not a variant (e.g. a learning rate tuned for each method x init, as in the paper)"


def _cell(v: object, column: str = "") -> str:
    if column == "eps":
        return eps_str(v)
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def run_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The per-run table: header and cells (AutoAttack columns only when some run has a number)."""
    steps = sorted({r["pgd_steps"] for r in rows})
    names = {"run": "run", "method": "method", "init": "init", "backbone": "backbone",
             "pretrain_threat": "pretrain threat", "data": "data", "eps": "eps",
             "selected_epoch": "epoch", "val_clean": "val clean", "val_robust": "val PGD",
             "test_clean": "test clean", "test_pgd": f"test PGD-{'/'.join(map(str, steps))}", "test_aa": "test AA",
             "aa_version": "AA version", "aa_n": "AA n", "test_expected": "expected (0..eps)", "seconds": "seconds"}
    cols = [c for c in COLUMNS if (c not in AA_COLUMNS or any(r["test_aa"] is not None for r in rows))
            and (c != "test_expected" or any(r.get("test_expected") is not None for r in rows))]
    if all(r.get("pretrain_threat", "unknown") in UNKNOWN_PRETRAIN for r in rows):
        cols.remove("pretrain_threat")
    return [names[c] for c in cols], [[_cell(r[c], c) for c in cols] for r in rows]


def unique(values) -> list:
    """The values in first-seen order, each once."""
    return list(dict.fromkeys(values))


def settings(rows: list[dict]) -> dict[str, str]:
    """The settings behind the tables, each as one string (values that differ between runs joined by " / ")."""
    def joined(values) -> str:
        return " / ".join(map(str, unique(v for v in values if v is not None))) or "–"

    out = {"threat": joined(f"{r['norm']} eps {eps_str(r['eps'])}" for r in rows),
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
    for backbone in unique(g["backbone"] for g in gs):
        mine = [g for g in gs if g["backbone"] == backbone]
        present = unique(g["init"] for g in mine)
        inits = [i for i in INITS if i in present] + [i for i in present if i not in INITS]
        cols = []
        for data in unique(g["data"] for g in mine):
            for init in inits:
                here = [g for g in mine if (g["data"], g["init"]) == (data, init)]
                cols += [(data, init, m) for m, _ in TABLE_METRICS if any(g["stats"][m]["n"] for g in here)]
                cols += [(data, init, "n")] if here else []
        cell = {(g["method"], g["variant"], g["data"], g["init"]): g for g in mine}
        seen = unique(g["method"] for g in mine)
        methods = [m for m in PAPER_METHODS if m in seen] + [m for m in seen if m not in PAPER_METHODS]
        keys = sorted(unique((g["method"], g["variant"]) for g in mine), key=lambda k: (methods.index(k[0]), k[1] != ""))
        rows = [{"method": m, "variant": v, "cells": [_stat(cell.get((m, v, d, i)), k) for d, i, k in cols]}
                for m, v in keys]
        notes = []
        for r in rows:
            for d in unique(g["data"] for g in mine):
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
    subs = unique(f"{s['attack']} {'-> ' + s['by'] if s['by'] else 'dropped'} at {s['classes']} classes ({s['why']})"
                  for r in rows for s in r.get("aa_substitutions") or [])
    if subs:
        notes.append("AutoAttack sub-attacks substituted for the class count: " + "; ".join(subs) + ".")
    return notes


def threat_notes(rows: list[dict]) -> list[str]:
    """One line per run whose backbone was pretrained against another threat model than the run's."""
    return [f"{r['run']}: {r['threat_mismatch']}" for r in rows if r.get("threat_mismatch")]


def integrity_lines(rows: list[dict]) -> list[tuple[bool, str]]:
    """The integrity flags of every run that has them, as (flagged, text) lines with their numbers' sentence."""
    return [(f["verdict"] == "flag", f"{r['run']}: {f['name']} {f['verdict'].upper()} ({f['file']}): {f['message']}")
            for r in rows for f in r.get("integrity") or []]


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
        epochs = unique(r["epochs"] for r in runs)
        per_epoch = [r["seconds"] / r["epochs"] for r in runs if r["epochs"]]
        total, aa_total = total + sum(secs), aa_total + sum(aa)
        shown = "/".join(str(e) for e in epochs if e is not None) or "–"
        body.append([g["label"], str(len(runs)), shown, f"{sum(secs) / len(secs):.0f}",
                     f"{sum(per_epoch) / len(per_epoch):.1f}" if per_epoch else "–",
                     f"{sum(aa) / len(aa):.0f} (n={len(aa)})" if aa else "–", f"{sum(secs) / 60:.1f}"])
    body.append(["all", str(len(rows)), "", "", "", f"{aa_total / 60:.1f} min in all" if aa_total else "–",
                 f"{total / 60:.1f}"])
    machines = " / ".join(unique(str(r["device"]) for r in rows if r["device"]))
    where = f"on {machines}" if machines else "(machine not recorded)"
    notes = [f"Wall time of training + validation + test per run (results.json `seconds`) {where}; AutoAttack "
             f"(`roli eval`) apart. In all {(total + aa_total) / 3600:.2f} h. A RoLI run's time includes its stage 1 "
             "only when no earlier run in the same folder provided it (normally the linear-probe run does)."]
    head = ["group", "runs", "epochs", "s per run", "s per epoch", "AA s per run", "minutes in all"]
    return head, body, notes


def row_name(row: dict) -> str:
    """A paper-table row's name: the method, and its variant when it has one."""
    return row["method"] + (f" ({row['variant']})" if row["variant"] else "")
