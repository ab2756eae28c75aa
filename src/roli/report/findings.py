"""Whether the paper's three findings (Hua et al., CVPR 2024, arXiv 2312.05716) hold in a study, with numbers and
significance (the spec: `roli.report.spec`; the records: `roli.report.records`).

1. `finding_backbone`: with a standard backbone, PEFT under adversarial training stays far less robust than with a
   robust one (Welch t-test per method, RanLI).
2. `finding_linear_vs_full`: with a robust backbone, linear probing matches or beats full finetuning (RanLI).
3. `finding_roli`: RoLI improves clean and robust accuracy over RanLI (paired by seed per method, then pooled
   over methods with a paired t-test and an exact sign-flip permutation test).

`findings(groups, spec)` returns them and the quirk comparisons (`roli.report.quirks`) as one JSON-serialisable
dict (non-finite numbers become null); `roli.report.sections` lays it out as data and `roli.report.markdown` /
`roli.report.html` render that. A missing group never crashes: its finding (or method row) says "not run" and
names the missing groups. AutoAttack statistics appear only when every seed involved has an AA number. Decisions
use the t-test's p-value; the sign-flip p-value is shown beside it, and a disagreement is pointed out. Pure numpy +
scipy: no torch import.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from roli.report.quirks import compare_quirks
from roli.report.records import aa_note, check_groups, has_metric, label, missing_groups, paired_metrics, seed_values
from roli.report.spec import METRICS, NAMES, ROBUST_METRICS, validate_spec
from roli.report.stats import ROLI_WORDS, diff_stats, finite, verdict, welch
from roli.report.wording import num, pvalue, signed, stat_clause

FORMAT = "roli-findings/1"
NOT_PEFT = ("full_finetune", "linear_probe")  # reported in finding 1, but not PEFT
LINEAR, FULL = "linear_probe", "full_finetune"


def finding_backbone(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 1: does a standard backbone leave adversarial PEFT far less robust than a robust one (RanLI)?"""
    spec, groups = validate_spec(spec), check_groups(groups)
    alpha, margin = spec["alpha"], spec["margin"]
    rule = (f"holds when, for every PEFT method run, the robust backbone is ahead by >= {margin:g} points in every "
            f"robust metric reported (PGD, and AA where every seed has one), with Welch p < {alpha:g} where testable "
            "(>= 2 seeds on both sides)")
    rows, missing = [], []
    for m in spec["methods"]:
        std_l, rob_l = label(spec["standard"], m, "ranli"), label(spec["robust"], m, "ranli")
        row = {"method": m, "peft": m not in NOT_PEFT, "standard": std_l, "robust": rob_l,
               "missing": missing_groups(groups, std_l, rob_l), "metrics": {}, "large_margin": None, "aa_note": None}
        rows.append(row)
        if row["missing"]:
            missing += row["missing"]
            continue
        s, r = groups[std_l], groups[rob_l]
        row["aa_note"] = aa_note((s, None), (r, None))
        for metric in ROBUST_METRICS:
            if metric == "aa" and not (has_metric(s, "aa") and has_metric(r, "aa")):
                continue
            w = welch(seed_values(r, metric), seed_values(s, metric), alpha)  # robust - standard
            w["large"] = w["diff"] >= margin and (w["p"] is None or w["p"] < alpha)
            row["metrics"][metric] = w
        row["large_margin"] = all(w["large"] for w in row["metrics"].values())
    ran = [r for r in rows if r["peft"] and not r["missing"]]
    status = "not run" if not ran else "holds" if all(r["large_margin"] for r in ran) else "does not hold"
    out = {"finding": "With a standard backbone, PEFT under adversarial training stays far less robust than with a "
                      "robust one.", "alpha": alpha, "rule": rule, "status": status, "methods": rows, "missing": missing}
    out["sentence"] = _sentence_backbone(out, ran, alpha, margin)
    return out


def _sentence_backbone(out: dict, ran: list[dict], alpha: float, margin: float) -> str:
    if not ran:
        return f"Not run: no PEFT method has both backbones (missing groups: {', '.join(out['missing']) or 'none'})."
    skipped = [r["method"] for r in out["methods"] if r["peft"] and r["missing"]]
    tail = f" (not run: {', '.join(skipped)})" if skipped else ""
    gaps = [r["metrics"]["pgd"]["diff"] for r in ran]
    ps = [r["metrics"]["pgd"]["p"] for r in ran]
    untested = [r["method"] for r in ran if r["metrics"]["pgd"]["p"] is None]
    tested = [p for p in ps if p is not None]
    sig = ("no test possible" if not tested else "every Welch p < 0.001" if max(tested) < 0.001
           else f"largest Welch {pvalue(max(tested))}")
    if untested:
        sig += f"; untested (n=1 or zero variance): {', '.join(untested)}"
    names = ", ".join(r["method"] for r in ran)
    if out["status"] == "holds":
        aa = [r["metrics"]["aa"]["diff"] for r in ran if "aa" in r["metrics"]]
        aa_part = f" and in AA by {num(min(aa))} to {num(max(aa))} ({len(aa)} of them)" if aa else ""
        return (f"Holds here: for every PEFT method run ({names}){tail}, the robust backbone is ahead in PGD accuracy "
                f"by {num(min(gaps))} to {num(max(gaps))} points{aa_part} (>= {margin:g} required; {sig}).")
    fails = []
    for r in ran:
        if not r["large_margin"]:
            bits = [f"{NAMES[k]} {signed(w['diff'])}, {pvalue(w['p'])}" for k, w in r["metrics"].items() if not w["large"]]
            fails.append(f"{r['method']} ({'; '.join(bits)})")
    return (f"Does not hold here: the robust backbone is not ahead by >= {margin:g} points with p < {alpha:g} for "
            f"{', '.join(fails)}{tail}.")


def finding_linear_vs_full(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 2: does linear probing match or beat full finetuning on the robust backbone (RanLI)?"""
    spec, groups = validate_spec(spec), check_groups(groups)
    alpha, wide = spec["alpha"], spec["ci_halfwidth"]
    lp_l, ft_l = label(spec["robust"], LINEAR, "ranli"), label(spec["robust"], FULL, "ranli")
    rule = (f"per metric: 'beats' when linear probing is ahead with Welch p < {alpha:g}, 'does not hold' when full "
            f"finetuning is ahead with p < {alpha:g}, else 'matches'; a 'matches' whose {1 - alpha:.0%} CI of the "
            f"difference is wider than ±{wide:g} points is underpowered (no evidence either way). The finding holds "
            "when no metric is 'does not hold'.")
    out = {"finding": "With a robust backbone, linear probing can match or beat full finetuning (random init).",
           "alpha": alpha, "rule": rule, "linear_probe": lp_l, "full_finetune": ft_l, "missing": missing_groups(groups, lp_l, ft_l),
           "metrics": {}, "status": "not run"}
    if out["missing"]:
        out["sentence"] = f"Not run: missing groups {', '.join(out['missing'])}."
        return out
    lp, ft = groups[lp_l], groups[ft_l]
    out["aa_note"] = aa_note((lp, None), (ft, None))
    for metric in METRICS:
        if metric == "aa" and not (has_metric(lp, "aa") and has_metric(ft, "aa")):
            continue
        w = welch(seed_values(lp, metric), seed_values(ft, metric), alpha)
        w["verdict"] = _lp_verdict(w, alpha)
        w["underpowered"] = w["ci"] is not None and (w["ci"][1] - w["ci"][0]) / 2 > wide
        out["metrics"][metric] = w
    verdicts = [w["verdict"] for w in out["metrics"].values()]
    out["status"] = ("does not hold" if "does not hold" in verdicts else "untested" if set(verdicts) == {"untested"}
                     else "holds")
    out["sentence"] = _sentence_linear(out, wide)
    return out


def _lp_verdict(w: dict, alpha: float) -> str:
    return {"holds": "beats", "not significant": "matches", "reversed": "does not hold"}.get(
        verdict(w, alpha), "untested")


def _sentence_linear(out: dict, wide: float) -> str:
    clauses = []
    for metric, w in out["metrics"].items():
        what = {"beats": "beats", "matches": "matches", "does not hold": "falls behind", "untested": "untested on"}
        c = f"{what[w['verdict']]} full finetuning on {NAMES[metric]} ({signed(w['diff'])} points"
        if w["ci"] is not None:
            c += f", {w['ci_level']:.0%} CI [{num(w['ci'][0])}, {num(w['ci'][1])}], {pvalue(w['p'])}"
        else:
            c += f", {w['note']}"
        if w["verdict"] == "matches" and w["underpowered"]:
            c += f"; underpowered: CI wider than ±{wide:g}, so this is not evidence of a match"
        clauses.append(c + ")")
    head = {"holds": "Holds here", "does not hold": "Does not hold here", "untested": "Cannot be tested here"}
    return f"{head[out['status']]}: linear probing " + "; ".join(clauses) + "."


def _pooled(diffs: list[float], alpha: float, paper: float | None) -> dict[str, Any]:
    """Paired differences pooled over methods, compared with the paper's average gain."""
    s = diff_stats(diffs, alpha)
    s["verdict"] = verdict(s, alpha, ROLI_WORDS)
    s["paper"] = paper
    s["paper_in_ci"] = None if paper is None or s["ci"] is None else s["ci"][0] <= paper <= s["ci"][1]
    s["p_vs_paper"] = None
    if paper is not None and s["p"] is not None:
        d = np.asarray(diffs, float)
        t = (d.mean() - paper) / (d.std(ddof=1) / math.sqrt(len(d)))
        s["p_vs_paper"] = finite(2 * stats.t.sf(abs(t), len(d) - 1))
    return s


def finding_roli(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 3: does RoLI beat RanLI (paired by seed, per method and pooled), as the paper's average gain says?"""
    spec, groups = validate_spec(spec), check_groups(groups)
    alpha = spec["alpha"]
    rule = (f"per metric, pooled over every (method, seed) pair: 'holds' when the mean RoLI - RanLI difference is "
            f"positive with paired t-test p < {alpha:g}, 'reversed' when negative with p < {alpha:g}, else 'not "
            "significant'. The finding holds when every pooled metric holds.")
    rows, missing = [], []
    for m in spec["methods"]:
        if m == LINEAR:  # linear probing has only a random init
            continue
        ran_l, roli_l = label(spec["robust"], m, "ranli"), label(spec["robust"], m, "roli")
        row = {"method": m, "ranli": ran_l, "roli": roli_l, "missing": missing_groups(groups, ran_l, roli_l)}
        rows.append(row)
        if row["missing"]:
            missing += row["missing"]
            continue
        row.update(paired_metrics(groups[roli_l], groups[ran_l], alpha, ROLI_WORDS))
    ran = [r for r in rows if not r["missing"] and r["seeds"]]
    out = {"finding": "RoLI improves clean and robust accuracy over RanLI, per method.", "alpha": alpha, "rule": rule,
           "methods": rows, "missing": missing, "pooled": {}, "status": "not run"}
    if not ran:
        out["sentence"] = (f"Not run: no method has both inits with a common seed (missing groups: "
                           f"{', '.join(missing) or 'none'}).")
        return out
    for metric in METRICS:
        lacking = [r["method"] for r in ran if metric not in r["metrics"]]
        if lacking:
            out["pooled"][metric] = {"note": f"not pooled: no {NAMES[metric]} for every seed of {', '.join(lacking)}"}
            continue
        diffs = [x for r in ran for x in (seed_values(groups[r["roli"]], metric, r["seeds"])
                                          - seed_values(groups[r["ranli"]], metric, r["seeds"]))]
        out["pooled"][metric] = _pooled(diffs, alpha, spec["paper"].get(f"roli_gain_{metric}"))
    verdicts = [s["verdict"] for s in out["pooled"].values() if "verdict" in s]
    out["status"] = ("holds" if verdicts and all(v == "holds" for v in verdicts) else
                     "partly holds" if "holds" in verdicts and "reversed" not in verdicts else "does not hold")
    out["sentence"] = _sentence_roli(out, len(ran))
    return out


def _sentence_roli(out: dict, n_methods: int) -> str:
    alpha = out["alpha"]
    clauses = []
    for metric, s in out["pooled"].items():
        if "verdict" not in s:
            clauses.append(f"{NAMES[metric]} {s['note']}")
            continue
        c = stat_clause(metric, s, alpha, "se") + f": {s['verdict']}"
        if s["paper"] is not None:
            where = "" if s["paper_in_ci"] is None else " (inside our CI)" if s["paper_in_ci"] else " (outside our CI)"
            c += f"; paper {signed(s['paper'])}{where}"
        clauses.append(c)
    head = {"holds": "Holds here", "partly holds": "Partly holds here", "does not hold": "Does not hold here"}
    n = next(s["n"] for s in out["pooled"].values() if "n" in s)
    skipped = f" (not run: {', '.join(out['missing'])})" if out["missing"] else ""
    return (f"{head[out['status']]}: RoLI - RanLI pooled over {n_methods} method(s), {n} (method, seed) pairs"
            f"{skipped}: " + "; ".join(clauses) + ".")


def findings(groups: dict, spec: dict) -> dict[str, Any]:
    """Every finding and quirk comparison of a study, as one JSON-serialisable dict (for the committed results)."""
    spec = validate_spec(spec)
    check_groups(groups)  # a bad record fails here, once
    return _jsonable({"format": FORMAT, "spec": spec,
                      "backbone": finding_backbone(groups, spec),
                      "linear_vs_full": finding_linear_vs_full(groups, spec),
                      "roli": finding_roli(groups, spec),
                      "quirks": compare_quirks(groups, spec)})


def _jsonable(x: Any) -> Any:
    """Plain dicts, lists, str, int, float and None; non-finite floats become None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite(x)
    return x
