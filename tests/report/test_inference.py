"""roli.report.inference against textbook computations and scipy on fixed inputs (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from roli.report.inference import holm, leave_one_method_out, seed_cluster, tost, tost_welch, two_way

# RoLI - RanLI gains: 4 methods x 3 seeds (rows = methods), a method effect and a seed effect plus noise.
GAINS = np.array([[4.1, 5.0, 3.2], [0.4, 1.1, -0.3], [0.9, 1.8, 0.2], [-0.2, 0.7, 0.1]])
METHODS = [m for m in "FLAB" for _ in range(3)]
SEEDS = [s for _ in range(4) for s in range(3)]


def test_two_way_matches_the_textbook_balanced_anova():
    d = GAINS
    m, s = d.shape
    resid = d - d.mean(1, keepdims=True) - d.mean(0, keepdims=True) + d.mean()
    df = (m - 1) * (s - 1)
    se = np.sqrt((resid**2).sum() / df / (m * s))
    t = d.mean() / se
    out = two_way(d.ravel(), METHODS, SEEDS)
    assert out["df"] == df == 6
    assert out["mean"] == pytest.approx(d.mean())
    assert out["se"] == pytest.approx(se)
    assert out["p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    lo, hi = out["ci"]
    assert (lo + hi) / 2 == pytest.approx(d.mean()) and hi - lo == pytest.approx(2 * stats.t.ppf(0.975, df) * se)
    # the seed effect is removed: a pooled one-sample t-test over the 12 pairs gives another p
    assert out["p"] != pytest.approx(stats.ttest_1samp(d.ravel(), 0).pvalue, rel=1e-3)


def test_two_way_without_residual_df_is_untested():
    out = two_way([1.0, 2.0], ["a", "b"], [0, 0])
    assert out["p"] is None and "no residual" in out["note"]


def test_seed_cluster_is_a_t_test_on_the_seed_means():
    out = seed_cluster(GAINS.ravel(), SEEDS)
    ref = stats.ttest_1samp(GAINS.mean(0), 0.0)
    assert out["n"] == 3 and out["df"] == 2
    assert out["p"] == pytest.approx(ref.pvalue) and out["t"] == pytest.approx(ref.statistic)


def test_leave_one_method_out_drops_each_method():
    out = leave_one_method_out(GAINS.ravel(), METHODS, SEEDS)
    assert sorted(out) == ["A", "B", "F", "L"]
    without_f = GAINS[1:]
    assert out["F"]["mean"] == pytest.approx(without_f.mean())
    assert out["F"]["p"] > two_way(GAINS.ravel(), METHODS, SEEDS)["p"]  # F carries the gain here


def test_holm_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    out = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": None})
    assert out == {"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02, "e": None}
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}


def test_tost_paired_against_scipy_one_sided_tests():
    d = np.array([0.3, -0.4, 0.8, 0.1, -0.2, 0.5])
    out = tost(d, margin=1.0)
    p_lo = stats.ttest_1samp(d + 1.0, 0.0, alternative="greater").pvalue
    p_hi = stats.ttest_1samp(d - 1.0, 0.0, alternative="less").pvalue
    assert out["p"] == pytest.approx(max(p_lo, p_hi))
    assert out["equivalent"] is True
    far = tost(d + 1.5, margin=1.0)  # mean 1.68 outside the margin: not equivalent
    assert far["equivalent"] is False
    # a non-significant difference with a wide CI is not a match
    noisy = tost([3.0, -3.0, 2.5, -2.0], margin=1.0)
    assert stats.ttest_1samp([3.0, -3.0, 2.5, -2.0], 0).pvalue > 0.05 and noisy["equivalent"] is False
    assert tost([1.0], margin=1.0)["equivalent"] is None


def test_tost_welch_against_scipy_shifted_welch_tests():
    a, b = np.array([80.1, 81.0, 79.5, 80.6]), np.array([80.4, 79.9, 80.8, 80.2, 81.1])
    out = tost_welch(a, b, margin=1.5)
    p1 = stats.ttest_ind(a + 1.5, b, equal_var=False, alternative="greater").pvalue
    p2 = stats.ttest_ind(a - 1.5, b, equal_var=False, alternative="less").pvalue
    assert out["p"] == pytest.approx(max(p1, p2))
    assert out["equivalent"] == (max(p1, p2) < 0.05)
    assert tost_welch([1.0], [1.0, 2.0], margin=1.0)["note"].startswith("n=1")
