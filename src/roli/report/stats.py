"""The statistics behind the findings, numpy + scipy only: Welch and paired t-tests with confidence intervals, an
exact (or seeded Monte Carlo) sign-flip permutation test, and the three-way verdict on a difference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

EXACT_MAX = 20  # the sign-flip test enumerates all 2^n patterns up to this n
DRAWS = 100_000  # ... and draws this many seeded random sign patterns above it
PERM_SEED = 0
ROLI_WORDS = ("holds", "not significant", "reversed")
QUIRK_WORDS = ("variant higher", "not significant", "variant lower")


def finite(x: Any) -> float | None:
    """A plain float, or None for a missing or non-finite number (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _zero(se: float, *samples: np.ndarray) -> bool:
    """A standard error that is only rounding noise (e.g. 48.7 + 2.0 - 48.7 for every seed): no t-test on it."""
    scale = max([1.0, *(float(np.max(np.abs(x))) for x in samples)])
    return se <= 1e-9 * scale


def welch(a, b, alpha: float = 0.05) -> dict[str, Any]:
    """Welch t-test and CI of mean(a) - mean(b): independent runs (two backbones/methods) need not share a spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    out = {"n_a": na, "n_b": nb, "mean_a": finite(a.mean()), "mean_b": finite(b.mean()),
           "std_a": finite(a.std(ddof=1)) if na > 1 else None, "std_b": finite(b.std(ddof=1)) if nb > 1 else None,
           "diff": finite(a.mean() - b.mean()), "t": None, "df": None, "p": None, "ci": None, "ci_level": 1 - alpha,
           "note": None}
    if min(na, nb) < 2:
        out["note"] = "n=1, no test"
        return out
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if _zero(se, a, b):
        out["note"] = "zero variance, no test"
        return out
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = (a.mean() - b.mean()) / se
    half = stats.t.ppf(1 - alpha / 2, df) * se
    out.update(t=finite(t), df=finite(df), p=finite(2 * stats.t.sf(abs(t), df)),
               ci=[finite(a.mean() - b.mean() - half), finite(a.mean() - b.mean() + half)])
    return out


def sign_flip(d, draws: int = DRAWS, seed: int = PERM_SEED) -> float:
    """Two-sided sign-flip permutation p of mean(d) = 0 (exact up to n=20): checks the t-test without normality."""
    d = np.asarray(d, float)
    if len(d) == 0:
        return 1.0
    obs = abs(d.sum())
    tol = 1e-9 * max(1.0, obs)
    if len(d) <= EXACT_MAX:
        sums = np.zeros(1)
        for x in d:  # the sums of all 2^n sign patterns, built by doubling
            sums = np.concatenate([sums + x, sums - x])
        return float(np.mean(np.abs(sums) >= obs - tol))
    rng = np.random.default_rng(seed)
    hits, left = 0, draws
    while left:
        k = min(left, 10_000)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, len(d)))
        hits += int(np.sum(np.abs(signs @ d) >= obs - tol))
        left -= k
    return (hits + 1) / (draws + 1)


def diff_stats(d, alpha: float) -> dict[str, Any]:
    """Mean, std, SE, one-sample t-test against 0, CI and sign-flip p of paired differences."""
    d = np.asarray(d, float)
    n = len(d)
    out = {"n": n, "mean": finite(d.mean()) if n else None, "std": finite(d.std(ddof=1)) if n > 1 else None,
           "se": None, "t": None, "df": None, "p": None, "ci": None, "ci_level": 1 - alpha,
           "sign_flip_p": finite(sign_flip(d)) if n else None, "sign_flip": "exact" if n <= EXACT_MAX else "monte carlo",
           "note": None}
    if n < 2:
        out["note"] = "n=1, no test" if n else "no paired seeds"
        return out
    se = d.std(ddof=1) / math.sqrt(n)
    out["se"] = finite(se)
    if _zero(se, d):
        out["note"] = "zero variance, no test"
        return out
    t = d.mean() / se
    half = stats.t.ppf(1 - alpha / 2, n - 1) * se
    out.update(t=finite(t), df=n - 1, p=finite(2 * stats.t.sf(abs(t), n - 1)), ci=[finite(d.mean() - half), finite(d.mean() + half)])
    if n == 2:
        out["note"] = "n=2: the t-test has 1 df"
    return out


def paired(a, b, alpha: float = 0.05) -> dict[str, Any]:
    """Paired t-test (+ sign-flip) of a - b over matched seeds: pairing removes the seed-to-seed spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired: a and b must have the same length, got {len(a)} and {len(b)}")
    return diff_stats(a - b, alpha)


def verdict(s: dict[str, Any], alpha: float, words: tuple[str, str, str] = ROLI_WORDS) -> str:
    """Three-way call on a difference (significantly up / not significant / significantly down, or "untested")."""
    if s.get("p") is None:
        return "untested"
    mean = s["mean"] if "mean" in s else s["diff"]
    if s["p"] < alpha:
        return words[0] if mean > 0 else words[2]
    return words[1]
