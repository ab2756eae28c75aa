"""How the findings' numbers are written: means, signed differences, p-values, CIs and the one-clause summary of a
test that the verdict sentences and the findings tables share.
"""

from __future__ import annotations

from roli.report.spec import NAMES


def stat_clause(metric: str, s: dict, alpha: float, spread: str) -> str:
    """'PGD +2.10 ± 0.50 (SE), 95% CI [1.02, 3.18], t-test p = 0.001, sign-flip p = 0.004' and notes."""
    c = f"{NAMES[metric]} {signed(s['mean'])}"
    if s.get(spread) is not None:
        c += f" ± {num(s[spread])} ({'SE' if spread == 'se' else 'std'})"
    if s.get("ci") is not None:
        c += f", {s['ci_level']:.0%} CI [{num(s['ci'][0])}, {num(s['ci'][1])}], t-test {pvalue(s['p'])}"
    else:
        c += f", {s['note']}"
    if s.get("sign_flip_p") is not None:
        c += f", sign-flip {pvalue(s['sign_flip_p'])}"
        if s.get("p") is not None and (s["p"] < alpha) != (s["sign_flip_p"] < alpha):
            c += " (the two tests disagree)"
    return c


def num(x: float | None) -> str:
    """An accuracy or spread with two decimals ('-' when missing)."""
    return "-" if x is None else f"{x:.2f}"


def signed(x: float | None) -> str:
    """A difference with its sign and two decimals ('-' when missing)."""
    return "-" if x is None else f"{x:+.2f}"


def pvalue(p: float | None) -> str:
    """p with 3 significant digits ('p < 0.001' below that)."""
    if p is None:
        return "no test"
    return "p < 0.001" if p < 0.001 else f"p = {p:#.3g}"


def pm(mean, std) -> str:
    """'mean ± std', or the mean alone when there is no std (one seed)."""
    return f"{num(mean)} ± {num(std)}" if std is not None else num(mean)


def ci_text(s: dict) -> str:
    """A test's confidence interval as '[low, high]' ('-' when untested)."""
    return "-" if s.get("ci") is None else f"[{num(s['ci'][0])}, {num(s['ci'][1])}]"


def test_text(s: dict) -> str:
    """A test's p-value as written, or why there is no test (n=1, zero variance)."""
    return pvalue(s["p"]) if s.get("p") is not None else (s.get("note") or "no test")
