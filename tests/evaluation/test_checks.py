"""Sanity checks: broken models are flagged (with a warning and an explanation), a sound robust model passes."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks.pgd import PGDConfig
from roli.config import ThreatConfig
from roli.evaluation.accuracy import accuracy
from roli.evaluation.checks import (
    check_deterministic,
    check_gradients,
    check_input_range,
    check_logits,
    model_checks,
)
from roli.evaluation.ordering import check_ordering, check_sweep
from roli.evaluation.suite import SUITES, eps_sweep, run_suite

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1


class Softmaxed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(1)


class RandomInference(nn.Module):
    """Dropout applied in forward regardless of eval mode: a randomized 'defense'."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.dropout(x, 0.3, training=True))


class Quantized(nn.Module):
    """Rounds its input to {0, 1}: zero input gradient everywhere (gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x))


def test_a_sound_robust_model_passes_every_model_check(robust_mlp):
    model, _, x, y = robust_mlp
    results = model_checks(model, x, y)
    assert [r.name for r in results] == ["input_range", "logits", "deterministic", "gradients"]
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
    json.dumps([r.to_dict() for r in results])  # goes into the results JSON as is


def test_softmax_outputs_are_flagged(robust_mlp, caplog):
    model, _, x, _ = robust_mlp
    with caplog.at_level(logging.WARNING, logger="roli"):
        res = check_logits(Softmaxed(model), x)
    assert not res.passed and "probabilities" in res.message and "return logits" in res.message
    assert "check logits failed" in caplog.text
    assert res.details["row_sum_min"] == pytest.approx(1.0, abs=1e-5)


def test_random_inference_is_flagged(robust_mlp, caplog):
    model, _, x, _ = robust_mlp
    wrapped = RandomInference(model).eval()
    with caplog.at_level(logging.WARNING, logger="roli"):
        res = check_deterministic(wrapped, x)
    assert not res.passed and "random inference" in res.message and res.details["changed_predictions"] > 0
    assert "check deterministic failed" in caplog.text


def test_zero_input_gradients_are_flagged(robust_mlp):
    model, _, x, y = robust_mlp
    res = check_gradients(Quantized(model), x, y)
    assert not res.passed and res.details["zero_gradient_points"] == len(x)
    assert "gradient masking" in res.message


def test_inputs_outside_0_1_are_flagged(robust_mlp):
    _, _, x, _ = robust_mlp
    assert check_input_range(x).passed
    res = check_input_range(x * 2 - 1)
    assert not res.passed and res.details["min"] == -1.0


def test_ordering(caplog):
    good = check_ordering({"clean": 90.0, "fgsm": 60.0, "pgd": 50.0, "autoattack": 48.0})
    assert good.passed and good.details["order"] == ["clean", "fgsm", "pgd", "autoattack"]
    with caplog.at_level(logging.WARNING, logger="roli"):
        bad = check_ordering({"clean": 90.0, "pgd": 55.0, "fgsm": 50.0, "autoattack": 56.0})
    assert not bad.passed
    assert bad.details["violations"] == ["fgsm 50.00% < pgd 55.00%", "pgd 55.00% < autoattack 56.00%"]
    assert "gradient masking" in bad.message and "check ordering failed" in caplog.text
    assert check_ordering({"clean": 90.0, "pgd": 90.0}).passed  # equal is allowed
    assert check_ordering({"clean": 50.0, "pgd": 50.5}, tol=1.0).passed


def test_sweep_checks_flag_a_rise_and_a_surviving_large_eps():
    pts = [{"eps": 0.0, "acc": 90.0}, {"eps": 0.1, "acc": 40.0}, {"eps": 0.2, "acc": 45.0}, {"eps": 0.5, "acc": 30.0}]
    res = {r.name: r for r in check_sweep(pts, clean=91.0)}
    assert set(res) == {"eps_monotone", "large_eps", "eps_zero_clean"}
    assert not res["eps_monotone"].passed and "eps 0.1: 40.00% -> eps 0.2: 45.00%" in res["eps_monotone"].message
    assert not res["large_eps"].passed and "gradient masking" in res["large_eps"].message
    assert not res["eps_zero_clean"].passed
    fine = [{"eps": 0.0, "acc": 90.0}, {"eps": 0.1, "acc": 40.0}, {"eps": 0.5, "acc": 0.0}]
    assert all(r.passed for r in check_sweep(fine, clean=90.0))


def test_eps_sweep_on_the_robust_model(robust_mlp):
    model, loader, *_ = robust_mlp
    cfg = PGDConfig(step_size=EPS / 4, steps=10)
    pts = eps_sweep(model, loader, cfg, ThreatConfig(eps=EPS))
    assert [p["eps"] for p in pts] == pytest.approx([0.0, 0.025, 0.05, 0.1, 0.2, 0.5])
    assert [p["step_size"] for p in pts[1:]] == pytest.approx([p["eps"] / 4 for p in pts[1:]])  # same ratio
    clean = accuracy(model, loader)["acc"]
    assert pts[0]["acc"] == clean  # eps = 0 gives the clean accuracy, exactly
    accs = [p["acc"] for p in pts]
    assert accs == sorted(accs, reverse=True) and accs[0] - accs[3] >= 10  # monotone, and it really attacks
    assert accs[-1] <= 5 and pts[-1]["large"]
    assert all(r.passed for r in check_sweep(pts, clean=clean))


def test_a_masked_model_fails_the_sweep(robust_mlp):
    """Rounding the input hides the gradient: PGD without a random start cannot move, accuracy never falls."""
    model, loader, *_ = robust_mlp
    cfg = PGDConfig(step_size=EPS / 4, steps=5, random_start=False)
    pts = eps_sweep(Quantized(model), loader, cfg, ThreatConfig(eps=EPS), factors=(0, 1))
    assert len({p["acc"] for p in pts}) == 1 and pts[-1]["eps"] == 0.5  # flat: the attack never moved
    res = {r.name: r for r in check_sweep(pts)}
    assert res["eps_monotone"].passed and not res["large_eps"].passed
    assert f"still {pts[-1]['acc']:.2f}%" in res["large_eps"].message


def test_quick_suite_reports_checks(robust_mlp):
    model, loader, *_ = robust_mlp
    out = run_suite(model, loader, SUITES["quick"], {"clean": None, "pgd": PGDConfig(step_size=0.025, steps=10)},
                    ThreatConfig(eps=EPS))
    assert set(out["results"]) == {"clean", "pgd"} and out["results"]["pgd"]["images_per_s"] > 0
    assert out["attacks"]["pgd"]["steps"] == 10 and out["threat"] == {"norm": "linf", "eps": EPS}
    names = [c["name"] for c in out["checks"]]
    assert names == ["input_range", "logits", "deterministic", "gradients", "ordering"] and out["checks_passed"]
    json.dumps(out)
