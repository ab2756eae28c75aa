"""Expected robustness: the mean accuracy over eps drawn uniformly from [0, target] (e.g. Ngnawe et al. 2025)."""

from __future__ import annotations

from collections.abc import Sequence


def expected_robustness(sweep_rows: Sequence[dict], target: float) -> float:
    """The mean accuracy (%) over eps uniform in [0, `target`]: the trapezoid integral of the eps sweep's accuracy
    curve (rows with `eps` and `acc`, as roli.evaluation.suite.eps_sweep returns them) from 0 to `target`, divided by
    `target`. One number for robustness at every strength up to the threat model, beside PGD and AutoAttack at it.

    Needs the sweep to contain eps 0 and eps `target` (the default sweep factors 0, 0.25, 0.5, 1 do); points above
    `target` are ignored. `target` 0: the accuracy at eps 0.

    Example:
        >>> rows = [{"eps": 0.0, "acc": 90.0}, {"eps": 0.05, "acc": 60.0}, {"eps": 0.1, "acc": 40.0}]
        >>> expected_robustness(rows, 0.1)
        62.5
    """
    tol = 1e-9 * max(target, 1e-12)
    pts = sorted((r["eps"], r["acc"]) for r in sweep_rows if r["eps"] <= target + tol)
    if not pts or pts[0][0] > tol or abs(pts[-1][0] - target) > tol:
        raise ValueError(f"expected robustness needs sweep points at eps 0 and at the target {target:g}; got eps "
                         f"{[r['eps'] for r in sweep_rows]}")
    if target <= tol:
        return float(pts[0][1])
    area = sum((e1 - e0) * (a0 + a1) / 2 for (e0, a0), (e1, a1) in zip(pts, pts[1:]))
    return area / target
