"""Finding 3 (Hua et al., CVPR 2024): does RoLI beat RanLI, per method, and against a compute-matched RanLI?

The sentence says "per method", so the verdict is per method: paired by seed (a seed fixes the data order and the
stage-1 head), Holm-corrected over the methods for each metric, and called

- "RoLI better" / "RoLI worse" when the Holm-adjusted p < alpha, in the direction of the mean;
- "equivalent" when not significant and TOST with the spec's `equivalence_margin` passes (a non-significant
  difference alone is never a match);
- "inconclusive" otherwise, and "untested" with fewer than two paired seeds.

Each control the spec lists (`controls`: `ranli`, the paper's comparison, and `ranli_matched`, RanLI trained for
RoLI's stage-1 + stage-2 epochs) gets the same analysis. The pooled line is a two-way (method + seed) model, shown
with a seed-cluster test and the pooled gain without each method (which method carries it); it informs, but the
verdict rests on the per-method tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from roli.report.inference import holm, leave_one_method_out, seed_cluster, tost, two_way
from roli.report.records import check_groups, label, missing_groups, paired_metrics, seed_values
from roli.report.spec import METRICS, NAMES, validate_spec
from roli.report.stats import ROLI_WORDS, finite
from roli.report.wording import pvalue, signed

LINEAR = "linear_probe"
CONTROL_NAMES = {"ranli": "RanLI", "ranli_matched": "RanLI (compute-matched)"}


def _verdict(s: dict, alpha: float) -> str:
    """The per-method call on one metric's paired differences (s carries `holm_p` and `tost`)."""
    if s.get("holm_p") is None:
        return "untested"
    if s["holm_p"] < alpha:
        return "RoLI better" if s["mean"] > 0 else "RoLI worse"
    return "equivalent" if s["tost"]["equivalent"] else "inconclusive"


def _method_call(verdicts: list[str]) -> str:
    """A method's call from its clean and PGD verdicts: better (both), worse (either), no gain (both equivalent),
    unclear (anything else: an inconclusive or untested metric)."""
    if all(v == "RoLI better" for v in verdicts):
        return "better"
    if "RoLI worse" in verdicts:
        return "worse"
    return "no gain" if all(v == "equivalent" for v in verdicts) else "unclear"


def _gains(groups: dict, row: dict, metric: str) -> np.ndarray:
    """RoLI - control per paired seed of one method's row (the paired test's differences, for TOST and pooling)."""
    return seed_values(groups[row["roli"]], metric, row["seeds"]) - seed_values(groups[row["control"]], metric,
                                                                                 row["seeds"])


def _per_method(groups: dict, spec: dict, control: str) -> list[dict]:
    """One row per method: RoLI - control paired by seed, each metric with its TOST; Holm-adjusted below."""
    rows = []
    for m in spec["methods"]:
        ctl, roli = label(spec["robust"], m, control), label(spec["robust"], m, "roli")
        if m == LINEAR or (control != spec["controls"][0] and ctl not in groups):
            continue  # a further control (e.g. compute-matched) is run for some methods only
        row = {"method": m, "control": ctl, "roli": roli, "missing": missing_groups(groups, ctl, roli)}
        if not row["missing"]:
            row.update(paired_metrics(groups[roli], groups[ctl], spec["alpha"], ROLI_WORDS))
            for metric, s in row["metrics"].items():
                s["tost"] = tost(_gains(groups, row, metric), spec["equivalence_margin"], spec["alpha"])
        rows.append(row)
    return rows


def _holm(rows: list[dict], alpha: float) -> None:
    """Holm's correction over the methods, per metric, then each metric's verdict."""
    for metric in METRICS:
        have = {r["method"]: r["metrics"][metric] for r in rows if metric in r.get("metrics", {})}
        adjusted = holm({m: s["p"] for m, s in have.items()})
        for m, s in have.items():
            s["holm_p"] = adjusted[m]
            s["verdict"] = _verdict(s, alpha)


def _pooled(groups: dict, rows: list[dict], metric: str, alpha: float, paper: float | None) -> dict:
    """The two-way (method + seed) test of the mean gain, its seed-cluster and leave-one-method-out lines."""
    ran = [r for r in rows if metric in r.get("metrics", {})]
    gains, methods, seeds = [], [], []
    for r in ran:
        d = _gains(groups, r, metric)
        gains += list(d)
        methods += [r["method"]] * len(d)
        seeds += r["seeds"]
    out = two_way(gains, methods, seeds, alpha)
    out["seed_cluster"] = seed_cluster(gains, seeds, alpha)
    out["without"] = leave_one_method_out(gains, methods, seeds, alpha) if len(set(methods)) > 2 else {}
    # a carrier: above the pooled mean, and without it the pooled gain is no longer significant
    own = {m: np.mean([g for g, mm in zip(gains, methods) if mm == m]) for m in set(methods)}
    out["carried_by"] = [m for m, s in out["without"].items() if out["p"] is not None and out["p"] < alpha
                         and (s["p"] is None or s["p"] >= alpha) and own[m] > out["mean"]]
    out["paper"], out["p_vs_paper"] = paper, None
    if paper is not None and out["p"] is not None:
        t = (out["mean"] - paper) / out["se"]
        out["p_vs_paper"] = finite(2 * stats.t.sf(abs(t), out["df"]))
    return out


def _control(groups: dict, spec: dict, control: str) -> dict[str, Any]:
    """The whole analysis against one control init."""
    alpha = spec["alpha"]
    rows = _per_method(groups, spec, control)
    _holm(rows, alpha)
    ran = [r for r in rows if not r["missing"] and r["seeds"]]
    pooled = {m: _pooled(groups, rows, m, alpha, spec["paper"].get(f"roli_gain_{m}") if control == "ranli" else None)
              for m in METRICS if ran and all(m in r["metrics"] for r in ran)}
    calls = {r["method"]: _method_call([r["metrics"][m]["verdict"] for m in ("clean", "pgd")]) for r in ran}
    better = [m for m, c in calls.items() if c == "better"]
    worse = [m for m, c in calls.items() if c == "worse"]
    status = ("not run" if not ran else "holds" if len(better) == len(ran) else "partly holds" if better
              else "does not hold" if all(c in ("worse", "no gain") for c in calls.values()) else "not shown")
    return {"control": control, "name": CONTROL_NAMES.get(control, control), "methods": rows, "pooled": pooled,
            "calls": calls, "better": better, "worse": worse, "ran": [r["method"] for r in ran], "status": status,
            "missing": [g for r in rows for g in r["missing"]]}


def finding_roli(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 3 against every control in the spec; the status is the paper's comparison (the first control)."""
    spec, groups = validate_spec(spec), check_groups(groups)
    alpha = spec["alpha"]
    controls = [_control(groups, spec, c) for c in spec["controls"]]
    first = controls[0]
    rule = (f"per method and metric, RoLI - control paired by seed, Holm-corrected over the methods: 'RoLI better' "
            f"when the adjusted p < {alpha:g} and the mean is positive ('RoLI worse' if negative); 'equivalent' when "
            f"not significant and TOST with margin ±{spec['equivalence_margin']:g} points passes; else "
            "'inconclusive'. A method shows the gain when it is 'RoLI better' on both clean and PGD accuracy. The "
            "finding holds when every method run shows it, partly when some do, does not hold when every method is "
            "'equivalent' on both or 'RoLI worse' on one, and is not shown otherwise. The pooled two-way (method + "
            "seed) line and its sensitivity lines are shown, not decided on.")
    out = {"finding": "RoLI improves clean and robust accuracy over RanLI, per method.", "alpha": alpha,
           "margin": spec["equivalence_margin"], "rule": rule, "controls": controls, "status": first["status"], "missing": first["missing"]}
    out["sentence"] = " ".join(_sentence(c, spec) for c in controls)
    return out


def _pooled_clause(metric: str, s: dict, alpha: float) -> str:
    c = f"{NAMES[metric]} {signed(s['mean'])} ({pvalue(s['p'])}; seed-cluster {pvalue(s['seed_cluster']['p'])})"
    if s["carried_by"]:
        c += f", carried by {' and '.join(s['carried_by'])} (without it: p >= {alpha:g})"
    return c


def why_not_run(c: dict) -> str:
    """Why a control has no result: its missing groups, or that no method has its cells."""
    if c["missing"]:
        return f"missing groups: {', '.join(c['missing'])}"
    return f"no method has {c['control']} cells" if not c["methods"] else "no method has both with a common seed"


def _sentence(c: dict, spec: dict) -> str:
    """One verdict sentence per control, saying what the per-method tests say, then the pooled line."""
    name, alpha = c["name"], spec["alpha"]
    if c["status"] == "not run":
        return f"Against {name}: not run ({why_not_run(c)})."
    n = max(len(r["seeds"]) for r in c["methods"] if r.get("seeds"))
    calls = [f"{r['method']} (" + ", ".join(f"{NAMES[m]} {signed(s['mean'])} {s['verdict']}"
                                            for m, s in r["metrics"].items() if m in ("clean", "pgd")) + ")"
             for r in c["methods"] if not r["missing"] and r.get("seeds")]
    pooled = "; ".join(_pooled_clause(m, s, alpha) for m, s in c["pooled"].items() if m in ("clean", "pgd"))
    return (f"Against {name}: {c['status']} here (up to {n} seeds a method, Holm over {len(c['ran'])} methods): "
            + "; ".join(calls) + "." + (f" Pooled (method + seed model): {pooled}." if pooled else ""))
