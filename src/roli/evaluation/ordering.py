"""Checks on accuracy numbers alone, without the model (no torch): a stronger attack never finds fewer errors than a
weaker one, and an eps sweep falls to ~0 monotonically. `roli report` uses them on the reported numbers; the
model checks that need a batch are in `roli.evaluation.checks`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise

log = logging.getLogger(__name__)

# Accuracies (%) must not rise along this order: each attack is at least as strong as the one before it.
STRENGTH_ORDER = ("clean", "fgsm", "pgd", "autoattack")


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: its name, whether it passed, the message a person reads, and the numbers behind it."""
    name: str
    passed: bool
    message: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """As plain data, for results JSON and the report."""
        return asdict(self)


def check_result(name: str, passed: bool, ok: str, problem: str, **details) -> CheckResult:
    """A CheckResult with the `ok` or the `problem` message; a failure is also logged as a warning."""
    res = CheckResult(name, passed, ok if passed else problem, details)
    if not passed:
        log.warning("check %s failed: %s", name, problem)
    return res


def check_ordering(accs: Mapping[str, float], tol: float = 0.0) -> CheckResult:
    """clean >= FGSM >= PGD >= AutoAttack (those present), with `tol` percentage points of slack."""
    seq = [(k, accs[k]) for k in STRENGTH_ORDER if accs.get(k) is not None]
    bad = [f"{a} {va:.2f}% < {b} {vb:.2f}%" for (a, va), (b, vb) in pairwise(seq) if vb > va + tol]
    shown = " >= ".join(f"{k} {v:.2f}%" for k, v in seq)
    return check_result("ordering", not bad, f"accuracy falls with attack strength: {shown}",
                   f"a stronger attack found fewer errors than a weaker one ({'; '.join(bad)}): a sign of gradient "
                   "masking, too few steps or a bug; do not trust the robust number", order=[k for k, _ in seq],
                   violations=bad)


def check_sweep(points: Sequence[Mapping], clean: float | None = None, near_zero: float = 5.0,
                tol: float = 0.0) -> list[CheckResult]:
    """An eps sweep ({eps, acc} sorted by eps, the last at a large eps): eps 0 equals clean accuracy, accuracy
    falls monotonically, and reaches ~0 at the large eps (else possible gradient masking)."""
    pts = sorted(points, key=lambda p: p["eps"])
    rises = [f"eps {a['eps']:.4g}: {a['acc']:.2f}% -> eps {b['eps']:.4g}: {b['acc']:.2f}%"
             for a, b in pairwise(pts) if b["acc"] > a["acc"] + tol]
    out = [check_result("eps_monotone", not rises, f"accuracy falls monotonically over {len(pts)} eps values",
                   f"accuracy rises with eps ({'; '.join(rises)}): a larger ball contains the smaller one, so the "
                   "attack is failing to find points it found before (gradient masking or a bug)", violations=rises)]
    last = pts[-1]
    out.append(check_result("large_eps", last["acc"] <= near_zero,
                       f"at eps {last['eps']:.4g} accuracy is {last['acc']:.2f}% (<= {near_zero}%)",
                       f"at eps {last['eps']:.4g} accuracy is still {last['acc']:.2f}% (> {near_zero}%): an attack "
                       "this large should break almost every point; possible gradient masking",
                       eps=last["eps"], acc=last["acc"], threshold=near_zero))
    zero = [p for p in pts if p["eps"] == 0]
    if clean is not None and zero:
        same = math.isclose(zero[0]["acc"], clean, abs_tol=1e-6)  # < 1 point of 10^8
        out.append(check_result("eps_zero_clean", same, f"eps 0 gives the clean accuracy ({clean:.2f}%)",
                           f"eps 0 gives {zero[0]['acc']:.2f}% but clean accuracy is {clean:.2f}%: the attack "
                           "changes inputs it may not change, or the model is not deterministic", clean=clean,
                           eps_zero=zero[0]["acc"]))
    return out
