"""Whether the paper's three findings (Hua et al., CVPR 2024, arXiv 2312.05716) hold in a study, with numbers and
significance (the spec: `roli.report.spec`; the records: `roli.report.records`).

1. `finding_backbone` (report/finding_backbone.py): with a standard backbone, PEFT under adversarial training stays
   far less robust than with a robust one (Welch t-test per method, RanLI; "holds descriptively" when n = 1).
2. `finding_linear_vs_full` (report/finding_linear.py): with a robust backbone, linear probing matches (TOST) or
   beats (Welch) full finetuning (RanLI).
3. `finding_roli` (report/finding_roli.py): RoLI improves clean and robust accuracy over RanLI, per method (paired
   by seed, Holm over methods, TOST for "equivalent"), also against a compute-matched RanLI; the pooled two-way
   (method + seed) model with its seed-cluster and leave-one-method-out lines beside it.

`findings(groups, spec)` returns them and the quirk comparisons (`roli.report.quirks`) as one JSON-serialisable
dict (non-finite numbers become null); `roli.report.sections` lays it out as data and `roli.report.markdown` /
`roli.report.html` render that. A missing group never crashes: its finding (or method row) says "not run" and
names the missing groups. AutoAttack statistics appear only when every seed involved has an AA number. Pure numpy +
scipy: no torch import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from roli.report.finding_backbone import finding_backbone
from roli.report.finding_linear import finding_linear_vs_full
from roli.report.finding_roli import finding_roli
from roli.report.quirks import compare_quirks
from roli.report.records import check_groups
from roli.report.spec import validate_spec
from roli.report.stats import finite

FORMAT = "roli-findings/2"  # 2: per-method finding 3 with Holm, TOST and controls; TOST in finding 2


def findings(groups: dict, spec: dict) -> dict[str, Any]:
    """Every finding and quirk comparison of a study, as one JSON-serialisable dict (for the committed results)."""
    spec = validate_spec(spec)
    check_groups(groups)  # a bad record fails here, once
    return _jsonable({"format": FORMAT, "spec": spec,
                      "backbone": finding_backbone(groups, spec),
                      "linear_vs_full": finding_linear_vs_full(groups, spec),
                      "roli": finding_roli(groups, spec),
                      "quirks": compare_quirks(groups, spec)})


def _jsonable(x: Any) -> Any:
    """Plain dicts, lists, str, int, float and None; non-finite floats become None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite(x)
    return x
