"""Expected robustness (mean accuracy over eps uniform in [0, target]) from an eps sweep, and where it is reported."""

from __future__ import annotations

import pytest

from roli.evaluation.expected import expected_robustness
from roli.report.collect import expected_of


def test_expected_robustness_is_the_trapezoid_mean_up_to_the_target():
    rows = [{"eps": 0.0, "acc": 90.0}, {"eps": 0.025, "acc": 80.0}, {"eps": 0.05, "acc": 60.0},
            {"eps": 0.1, "acc": 40.0}, {"eps": 0.2, "acc": 5.0}, {"eps": 0.5, "acc": 0.0}]
    # (0.025 * 85 + 0.025 * 70 + 0.05 * 50) / 0.1; points above the target do not count
    assert expected_robustness(rows, 0.1) == pytest.approx(63.75)
    assert expected_robustness(rows, 0.0) == 90.0
    with pytest.raises(ValueError, match="eps 0 and at the target"):
        expected_robustness(rows[1:], 0.1)
    with pytest.raises(ValueError, match="eps 0 and at the target"):
        expected_robustness(rows, 0.15)


def test_the_report_takes_the_eval_json_number_else_computes_it_from_the_sweep():
    sweep = [{"eps": 0.0, "acc": 90.0}, {"eps": 0.05, "acc": 60.0}, {"eps": 0.1, "acc": 40.0}]
    assert expected_of({"sweep": sweep}, 0.1) == pytest.approx(62.5)  # an eval JSON of roli 0.2
    assert expected_of({"sweep": sweep, "expected_robustness": 61.0}, 0.1) == 61.0
    assert expected_of({"sweep": sweep[1:]}, 0.1) is None  # the sweep does not start at eps 0
    assert expected_of(None, 0.1) is None
