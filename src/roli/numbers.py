"""Numbers as people write them: one parser for `8/255` and `1e-3`, and one formatter each for an eps and a plain
number, shared by the config, the CLI and the report (ground floor: imports nothing of roli).

Papers write L∞ budgets as multiples of 1/255 (8/255, 2/255); YAML 1.1 reads `1e-3` as a string. Both must mean the
same number in a recipe, after `--set`, in a results.json and in the report.
"""

from __future__ import annotations

import math
import re

FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")
EPS_DIGITS = 4  # significant digits of an eps that is not a multiple of 1/255


def parse_number(value: object) -> float:
    """`8/255`, `"1e-3"`, `0.1` or `3` as a finite float; ValueError for anything else.

    Example:
        >>> parse_number("8/255") == 8 / 255, parse_number("1e-3")
        (True, 0.001)
    """
    if isinstance(value, str):
        m = FRACTION.match(value)
        try:
            value = float(m.group(1)) / float(m.group(2)) if m else float(value)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"not a number: {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    try:
        out = float(value)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"not a finite number: {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"not a finite number: {value!r}")
    return out


def eps_str(eps: float) -> str:
    """An eps (or PGD step) as the papers write it: `8/255` for a multiple of 1/255 below 1 (L-inf pixel units),
    else 4 significant digits (an L2 radius of 3 is `3`, not `765/255`).

    Example:
        >>> eps_str(8 / 255), eps_str(0.1), eps_str(0.0), eps_str(3.0)
        ('8/255', '0.1', '0', '3')
    """
    k = round(eps * 255)
    if k and eps < 1 and abs(eps * 255 - k) < 1e-6:
        return f"{k}/255"
    return f"{eps:.{EPS_DIGITS}g}"


def number_str(value: object) -> str:
    """A config value for people: floats without a trailing `.0` (`16`, `0.001`), everything else as `repr`.

    Example:
        >>> number_str(16.0), number_str(1e-3), number_str("linf")
        ('16', '0.001', "'linf'")
    """
    return f"{value:g}" if isinstance(value, float) else repr(value)
