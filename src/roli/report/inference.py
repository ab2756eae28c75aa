"""Tests for the study's design questions, numpy + scipy only (issue 23): a two-way (method + seed) model of paired
gains, the seed-cluster and leave-one-method-out sensitivity lines, Holm's step-down correction and TOST equivalence.

Why not one pooled paired t-test: the RoLI cells of a seed share one stage-1 head and a data order, so the pooled
pairs are not independent. The two-way model takes the seed effect out; the seed-cluster test (one mean gain per
seed, n = seeds) assumes nothing about how cells of a seed correlate and is the conservative bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from roli.report.stats import finite


def _effects(levels: Sequence[Any]) -> np.ndarray:
    """Sum-to-zero (effect) coding of a factor: k - 1 columns; the intercept is then the unweighted grand mean."""
    names = sorted(set(levels), key=str)
    cols = np.zeros((len(levels), max(0, len(names) - 1)))
    for row, level in enumerate(levels):
        i = names.index(level)
        if i < len(names) - 1:
            cols[row, i] = 1.0
        else:
            cols[row, :] = -1.0
    return cols


def two_way(gains: Sequence[float], methods: Sequence[Any], seeds: Sequence[Any], alpha: float = 0.05) -> dict:
    """The mean gain under an additive method + seed model (OLS, effect coding): its estimate, SE, t, df, p, CI.

    Example:
        >>> two_way([4.0, 1.0, 5.0, 0.5], ["full", "lora", "full", "lora"], [0, 0, 1, 1])["df"]
        1
    """
    d = np.asarray(gains, float)
    x = np.column_stack([np.ones(len(d)), _effects(methods), _effects(seeds)])
    out = {"n": len(d), "methods": len(set(methods)), "seeds": len(set(seeds)), "mean": None, "se": None, "t": None,
           "df": None, "p": None, "ci": None, "ci_level": 1 - alpha, "note": None}
    rank = np.linalg.matrix_rank(x)
    df = len(d) - rank
    beta, *_ = np.linalg.lstsq(x, d, rcond=None)
    out["mean"] = finite(beta[0])
    if df < 1:
        out["note"] = "no residual degrees of freedom (one seed or one method), no test"
        return out
    resid = d - x @ beta
    sigma2 = float(resid @ resid) / df
    se = math.sqrt(sigma2 * np.linalg.pinv(x.T @ x)[0, 0])
    if se <= 1e-12 * max(1.0, float(np.max(np.abs(d)))):
        out["note"] = "zero residual variance, no test"
        return out
    t = beta[0] / se
    half = stats.t.ppf(1 - alpha / 2, df) * se
    out.update(se=finite(se), t=finite(t), df=int(df), p=finite(2 * stats.t.sf(abs(t), df)),
               ci=[finite(beta[0] - half), finite(beta[0] + half)])
    return out


def seed_cluster(gains: Sequence[float], seeds: Sequence[Any], alpha: float = 0.05) -> dict:
    """One-sample t-test on the per-seed mean gains (n = seeds): valid however the cells of one seed correlate."""
    means = [float(np.mean([g for g, s in zip(gains, seeds) if s == seed])) for seed in sorted(set(seeds), key=str)]
    out = {"n": len(means), "mean": finite(np.mean(means)) if means else None, "p": None, "t": None, "df": None,
           "note": None}
    if len(means) < 2 or np.std(means) == 0:
        out["note"] = "fewer than 2 seeds (or no spread), no test"
        return out
    res = stats.ttest_1samp(means, 0.0)
    out.update(t=finite(res.statistic), df=len(means) - 1, p=finite(res.pvalue))
    return out


def leave_one_method_out(gains: Sequence[float], methods: Sequence[Any], seeds: Sequence[Any],
                         alpha: float = 0.05) -> dict[str, dict]:
    """The two-way test again without each method in turn: does one method carry the pooled gain?"""
    out = {}
    for left in sorted(set(methods), key=str):
        keep = [i for i, m in enumerate(methods) if m != left]
        out[str(left)] = two_way([gains[i] for i in keep], [methods[i] for i in keep], [seeds[i] for i in keep], alpha)
    return out


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values (family-wise error control over the per-method tests); None stays None.

    Example:
        >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
        {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    tested = sorted((p, k) for k, p in pvalues.items() if p is not None)
    m, running, out = len(tested), 0.0, dict.fromkeys(pvalues)
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = round(running, 12)
    return out


def tost(diffs: Sequence[float], margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided t-tests of |mean(diffs)| < margin (paired differences): `equivalent` when both reject at alpha,
    i.e. the 1 - 2 alpha CI lies inside (-margin, margin). A non-significant difference alone is not a "match".

    Example:
        >>> tost([0.2, -0.1, 0.3, 0.0], margin=1.0)["equivalent"]
        True
    """
    d = np.asarray(diffs, float)
    out = {"n": len(d), "mean": finite(d.mean()) if len(d) else None, "margin": margin, "p": None, "ci": None,
           "ci_level": 1 - 2 * alpha, "equivalent": None, "note": None}
    if len(d) < 2 or d.std(ddof=1) == 0:
        out["note"] = "n < 2 or no spread: untested"
        return out
    lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
    se = d.std(ddof=1) / math.sqrt(len(d))
    half = stats.t.ppf(1 - alpha, len(d) - 1) * se
    p = max(lower, upper)
    out.update(p=finite(p), ci=[finite(d.mean() - half), finite(d.mean() + half)], equivalent=bool(p < alpha))
    return out


def tost_welch(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> dict:
    """TOST for two independent samples (Welch's df): is |mean(a) - mean(b)| < margin?"""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"n_a": len(a), "n_b": len(b), "diff": finite(a.mean() - b.mean()) if len(a) and len(b) else None,
           "margin": margin, "p": None, "ci": None, "ci_level": 1 - 2 * alpha, "equivalent": None, "note": None}
    if min(len(a), len(b)) < 2:
        out["note"] = "n=1 on a side: untested"
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        out["note"] = "no spread: untested"
        return out
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = a.mean() - b.mean()
    p = max(stats.t.sf((diff + margin) / se, df), stats.t.cdf((diff - margin) / se, df))
    half = stats.t.ppf(1 - alpha, df) * se
    out.update(p=finite(p), df=finite(df), ci=[finite(diff - half), finite(diff + half)], equivalent=bool(p < alpha))
    return out
