"""Finding 2 (Hua et al., CVPR 2024): with a robust backbone, linear probing can match or beat full finetuning
(RanLI, independent runs: Welch's test, and TOST for "matches").

Per metric: "beats" when linear probing is ahead with Welch p < alpha, "falls behind" when full finetuning is, and
"matches" only when an equivalence test passes (TOST with the spec's `equivalence_margin`): a difference that is
merely not significant is "inconclusive", never a match. With one seed on a side: "untested".
"""

from __future__ import annotations

from typing import Any

from roli.report.inference import tost_welch
from roli.report.records import aa_note, check_groups, has_metric, label, missing_groups, seed_values
from roli.report.spec import METRICS, NAMES, validate_spec
from roli.report.stats import welch
from roli.report.wording import num, pvalue, signed

LINEAR, FULL = "linear_probe", "full_finetune"


def _verdict(w: dict, alpha: float) -> str:
    """beats / falls behind / matches / inconclusive / untested (w carries its Welch test and its TOST)."""
    if w["p"] is None:
        return "untested"
    if w["p"] < alpha:
        return "beats" if w["diff"] > 0 else "falls behind"
    return "matches" if w["tost"]["equivalent"] else "inconclusive"


def finding_linear_vs_full(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 2: does linear probing match or beat full finetuning on the robust backbone (RanLI)?"""
    spec, groups = validate_spec(spec), check_groups(groups)
    alpha, margin = spec["alpha"], spec["equivalence_margin"]
    lp_l, ft_l = label(spec["robust"], LINEAR, "ranli"), label(spec["robust"], FULL, "ranli")
    rule = (f"per metric: 'beats' when linear probing is ahead with Welch p < {alpha:g}, 'falls behind' when full "
            f"finetuning is ahead with p < {alpha:g}, 'matches' when TOST shows the difference within ±{margin:g} "
            f"points (p < {alpha:g}), else 'inconclusive'. The finding holds when every metric beats or matches, "
            "does not hold when any falls behind, and is inconclusive otherwise.")
    out = {"finding": "With a robust backbone, linear probing can match or beat full finetuning (random init).",
           "alpha": alpha, "rule": rule, "linear_probe": lp_l, "full_finetune": ft_l,
           "missing": missing_groups(groups, lp_l, ft_l), "metrics": {}, "status": "not run"}
    if out["missing"]:
        out["sentence"] = f"Not run: missing groups {', '.join(out['missing'])}."
        return out
    lp, ft = groups[lp_l], groups[ft_l]
    out["aa_note"] = aa_note((lp, None), (ft, None))
    for metric in METRICS:
        if metric == "aa" and not (has_metric(lp, "aa") and has_metric(ft, "aa")):
            continue
        a, b = seed_values(lp, metric), seed_values(ft, metric)
        w = welch(a, b, alpha)
        w["tost"] = tost_welch(a, b, margin, alpha)
        w["verdict"] = _verdict(w, alpha)
        out["metrics"][metric] = w
    verdicts = [w["verdict"] for w in out["metrics"].values()]
    out["status"] = ("does not hold" if "falls behind" in verdicts else "untested" if set(verdicts) == {"untested"}
                     else "holds" if set(verdicts) <= {"beats", "matches"} else "inconclusive")
    out["sentence"] = _sentence(out)
    return out


def _sentence(out: dict) -> str:
    clauses = []
    for metric, w in out["metrics"].items():
        c = f"{w['verdict']} on {NAMES[metric]} ({signed(w['diff'])} points"
        if w["ci"] is not None:
            c += (f", {w['ci_level']:.0%} CI [{num(w['ci'][0])}, {num(w['ci'][1])}], Welch {pvalue(w['p'])}, "
                  f"TOST ±{w['tost']['margin']:g} {pvalue(w['tost']['p'])}")
        else:
            c += f", {w['note']}"
        clauses.append(c + ")")
    head = {"holds": "Holds here", "does not hold": "Does not hold here", "untested": "Cannot be tested here",
            "inconclusive": "Inconclusive here"}
    return f"{head[out['status']]}: linear probing " + "; ".join(clauses) + "."
