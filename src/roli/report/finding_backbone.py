"""Finding 1 (Hua et al., CVPR 2024): with a standard backbone, PEFT under adversarial training stays far less robust
than with a robust one (RanLI, Welch t-test per method).

A method "holds" when the robust backbone is ahead by the spec's `margin` in every robust metric with Welch p <
alpha. With one seed on a side there is no test: the margin can hold only descriptively, and the finding then says
"holds descriptively" and names the untested methods instead of claiming more than its numbers allow.
"""

from __future__ import annotations

from typing import Any

from roli.report.records import aa_note, check_groups, has_metric, label, missing_groups, seed_values
from roli.report.spec import NAMES, ROBUST_METRICS, validate_spec
from roli.report.stats import welch
from roli.report.wording import num, pvalue, signed

NOT_PEFT = ("full_finetune", "linear_probe")  # reported in finding 1, but not PEFT


def _row(groups: dict, spec: dict, m: str) -> dict[str, Any]:
    """One method: robust - standard per robust metric, each with its Welch test and margin verdict."""
    alpha, margin = spec["alpha"], spec["margin"]
    std_l, rob_l = label(spec["standard"], m, "ranli"), label(spec["robust"], m, "ranli")
    row = {"method": m, "peft": m not in NOT_PEFT, "standard": std_l, "robust": rob_l,
           "missing": missing_groups(groups, std_l, rob_l), "metrics": {}, "large_margin": None, "aa_note": None,
           "tested": None}
    if row["missing"]:
        return row
    s, r = groups[std_l], groups[rob_l]
    row["aa_note"] = aa_note((s, None), (r, None))
    for metric in ROBUST_METRICS:
        if metric == "aa" and not (has_metric(s, "aa") and has_metric(r, "aa")):
            continue
        w = welch(seed_values(r, metric), seed_values(s, metric), alpha)  # robust - standard
        w["large"] = w["diff"] >= margin and (w["p"] is None or w["p"] < alpha)
        row["metrics"][metric] = w
    row["large_margin"] = all(w["large"] for w in row["metrics"].values())
    row["tested"] = all(w["p"] is not None for w in row["metrics"].values())
    return row


def finding_backbone(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 1: does a standard backbone leave adversarial PEFT far less robust than a robust one (RanLI)?"""
    spec, groups = validate_spec(spec), check_groups(groups)
    alpha, margin = spec["alpha"], spec["margin"]
    rule = (f"holds when, for every PEFT method run, the robust backbone is ahead by >= {margin:g} points in every "
            f"robust metric reported (PGD, and AA where every seed has one) with Welch p < {alpha:g}; with one seed "
            "on a side there is no test, and a margin that holds there holds only descriptively")
    rows = [_row(groups, spec, m) for m in spec["methods"]]
    missing = [g for r in rows for g in r["missing"]]
    ran = [r for r in rows if r["peft"] and not r["missing"]]
    if not ran:
        status = "not run"
    elif not all(r["large_margin"] for r in ran):
        status = "does not hold"
    else:
        status = "holds" if all(r["tested"] for r in ran) else "holds descriptively"
    out = {"finding": "With a standard backbone, PEFT under adversarial training stays far less robust than with a "
                      "robust one.", "alpha": alpha, "rule": rule, "status": status, "methods": rows, "missing": missing}
    out["sentence"] = _sentence(out, ran, alpha, margin)
    return out


def _sentence(out: dict, ran: list[dict], alpha: float, margin: float) -> str:
    if not ran:
        return f"Not run: no PEFT method has both backbones (missing groups: {', '.join(out['missing']) or 'none'})."
    skipped = [r["method"] for r in out["methods"] if r["peft"] and r["missing"]]
    tail = f" (not run: {', '.join(skipped)})" if skipped else ""
    gaps = [r["metrics"]["pgd"]["diff"] for r in ran]
    tested = [r["metrics"]["pgd"]["p"] for r in ran if r["metrics"]["pgd"]["p"] is not None]
    untested = [r["method"] for r in ran if not r["tested"]]
    sig = ("" if not tested else "; every Welch p < 0.001" if max(tested) < 0.001
           else f"; largest Welch {pvalue(max(tested))}")
    names = ", ".join(r["method"] for r in ran)
    if out["status"] in ("holds", "holds descriptively"):
        aa = [r["metrics"]["aa"]["diff"] for r in ran if "aa" in r["metrics"]]
        aa_part = f" and in AA by {num(min(aa))} to {num(max(aa))} ({len(aa)} of them)" if aa else ""
        head = "Holds here" if out["status"] == "holds" else "Holds descriptively here, not tested"
        why = f" (n = 1 on a side for {', '.join(untested)}: no test)" if untested else ""
        return (f"{head}{why}: for every PEFT method run ({names}){tail}, the robust backbone is ahead in PGD "
                f"accuracy by {num(min(gaps))} to {num(max(gaps))} points{aa_part} (>= {margin:g} required{sig}).")
    fails = []
    for r in ran:
        if not r["large_margin"]:
            bits = [f"{NAMES[k]} {signed(w['diff'])}, {pvalue(w['p'])}" for k, w in r["metrics"].items() if not w["large"]]
            fails.append(f"{r['method']} ({'; '.join(bits)})")
    return (f"Does not hold here: the robust backbone is not ahead by >= {margin:g} points with p < {alpha:g} for "
            f"{', '.join(fails)}{tail}.")
