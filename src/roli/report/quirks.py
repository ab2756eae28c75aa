"""The reference code's quirks against roli's defaults: each `compare` pair of the findings spec, variant - default
paired by seed, in numbers and one sentence.
"""

from __future__ import annotations

from typing import Any

from roli.report.records import check_groups, missing_groups, paired_metrics
from roli.report.spec import NAMES, validate_spec
from roli.report.stats import QUIRK_WORDS
from roli.report.wording import stat_clause


def compare_quirks(groups: dict, spec: dict) -> list[dict[str, Any]]:
    """Each `compare` pair, variant - default paired by seed: roli's deviations from the reference, in numbers."""
    spec, groups = validate_spec(spec), check_groups(groups)
    alpha = spec["alpha"]
    out = []
    for c in spec["compare"]:
        entry = {**c, "missing": missing_groups(groups, c["default"], c["variant"]), "status": "not run"}
        if entry["missing"]:
            entry["sentence"] = f"{c['name']}: not run (missing groups: {', '.join(entry['missing'])})."
        else:
            entry.update(paired_metrics(groups[c["variant"]], groups[c["default"]], alpha, QUIRK_WORDS))
            entry["status"] = "compared" if entry["seeds"] else "not run"
            entry["sentence"] = _sentence_quirk(entry, alpha)
        out.append(entry)
    return out


def _sentence_quirk(e: dict, alpha: float) -> str:
    if not e["seeds"]:
        return f"{e['name']}: not run (no seed in both {e['default']} and {e['variant']})."
    by = {v: [NAMES[m] for m, s in e["metrics"].items() if s["verdict"] == v] for v in (*QUIRK_WORDS, "untested")}
    head = [f"{what} on {', '.join(by[v])}" for v, what in
            (("variant higher", "the variant is significantly higher"),
             ("variant lower", "the variant is significantly lower"),
             ("not significant", "no significant difference"), ("untested", "no test possible")) if by[v]]
    bits = [stat_clause(m, s, alpha, "std") for m, s in e["metrics"].items()]
    return (f"{e['name']}: {'; '.join(head)} ({e['variant']} - {e['default']}, seeds "
            f"{', '.join(map(str, e['seeds']))}: " + "; ".join(bits) + ").")
