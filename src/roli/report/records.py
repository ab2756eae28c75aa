"""The per-seed records the findings read: a group label (f"{prefix}-{method}-{init}") mapped to records
{"seed": int, "clean": float, "pgd": float, "aa": float | None} (test accuracies in %), checked once, and the
seed pairing of two groups.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from roli.errors import ResultsError
from roli.report.spec import METRICS
from roli.report.stats import paired, verdict


def label(prefix: str, method: str, init: str) -> str:
    """A group's label, f"{prefix}-{method}-{init}": the one naming rule every finding looks groups up by."""
    return f"{prefix}-{method}-{init}"


def is_number(v: Any) -> bool:
    """A finite int or float (numpy's too), not a bool: what a record's accuracy must be."""
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)


def check_groups(groups: Any) -> dict[str, dict[int, dict]]:
    """Each group's records keyed by seed; ResultsError for a record roli cannot read (a missing group is fine)."""
    if not isinstance(groups, dict):
        raise ResultsError(f"findings: groups must map a group label to a list of per-seed records, got "
                           f"{type(groups).__name__}")
    out: dict[str, dict[int, dict]] = {}
    for name, recs in groups.items():
        if not isinstance(recs, list):
            raise ResultsError(f"findings: group {name!r} must be a list of per-seed records, got {type(recs).__name__}")
        by_seed: dict[int, dict] = {}
        for rec in recs:
            seed = rec.get("seed") if isinstance(rec, dict) else None
            if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
                raise ResultsError(f"findings: group {name!r} has a record without an integer seed: {rec!r}")
            for key in ("clean", "pgd"):
                if not is_number(rec.get(key)):
                    raise ResultsError(f"findings: group {name!r} seed {seed}: {key} must be a finite number, "
                                       f"got {rec.get(key)!r}")
            if seed in by_seed:
                raise ResultsError(f"findings: group {name!r} has seed {seed} twice; keep one record per seed")
            by_seed[int(seed)] = rec
        if by_seed:
            out[str(name)] = by_seed
    return out


def aa_note(*parts: tuple[dict[int, dict], list[int] | None]) -> str | None:
    """Why AA is left out when some, but not all, of the seeds involved have an AA number."""
    seeds = [(recs, list(recs) if ss is None else ss) for recs, ss in parts]
    have = [is_number(recs[s].get("aa")) for recs, ss in seeds for s in ss]
    return "AA left out: not every seed has an AA number" if any(have) and not all(have) else None


def has_metric(recs: dict[int, dict], metric: str, seeds: list[int] | None = None) -> bool:
    """Every seed involved has a finite number for `metric` (AA is optional per record)."""
    seeds = list(recs) if seeds is None else seeds
    return bool(seeds) and all(is_number(recs[s].get(metric)) for s in seeds)


def seed_values(recs: dict[int, dict], metric: str, seeds: list[int] | None = None) -> np.ndarray:
    """A group's numbers for `metric` over `seeds` (all, sorted, when None), as an array."""
    seeds = sorted(recs) if seeds is None else seeds
    return np.array([float(recs[s][metric]) for s in seeds])


def missing_groups(groups: dict, *labels: str) -> list[str]:
    """The labels that are not among the groups (a finding names them as not run)."""
    return [g for g in labels if g not in groups]


def pair_seeds(x: dict[int, dict], y: dict[int, dict]) -> tuple[list[int], list[int]]:
    """Seeds present in both groups, and those present in only one (left out of the pairing)."""
    return sorted(set(x) & set(y)), sorted(set(x) ^ set(y))


def paired_metrics(x: dict[int, dict], y: dict[int, dict], alpha: float, words) -> dict[str, Any]:
    """x - y paired by seed for clean, PGD and (when every paired seed has it in both groups) AA."""
    seeds, unpaired = pair_seeds(x, y)
    out = {"seeds": seeds, "unpaired_seeds": unpaired, "metrics": {}, "aa_note": aa_note((x, seeds), (y, seeds))}
    for metric in METRICS:
        if not seeds or (metric == "aa" and not (has_metric(x, "aa", seeds) and has_metric(y, "aa", seeds))):
            continue
        s = paired(seed_values(x, metric, seeds), seed_values(y, metric, seeds), alpha)
        s["verdict"] = verdict(s, alpha, words)
        out["metrics"][metric] = s
    return out
