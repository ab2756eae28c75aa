"""roli's PGD and FGSM against an independent implementation (torchattacks 3.5.1) on the same model and data.

torchattacks is a test-only dependency installed with `pip install --no-deps torchattacks==3.5.1` (its metadata
pins an old `requests`); `make setup` does that. Without it these tests are skipped.
"""

from __future__ import annotations

import pytest
import torch

from roli.attacks import make_attack

torchattacks = pytest.importorskip(
    "torchattacks", reason="torchattacks is not installed (pip install --no-deps torchattacks==3.5.1)")
pytestmark = pytest.mark.usefixtures("one_thread")

EPS, STEPS = 0.1, 10


def robust_acc(model, x_adv, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()


def test_pgd_last_iterate_matches_torchattacks(robust_mlp):
    """Same seed, same random start, same steps: x_adv agrees to float rounding (torchattacks keeps the last
    iterate; its projection x + clip(x_adv - x) differs from ours by at most an ulp)."""
    model, _, x, y = robust_mlp
    ours_atk = make_attack("pgd", eps=EPS, step_size=EPS / 4, steps=STEPS, select="last")
    torch.manual_seed(7)
    ours = ours_atk(model, x, y)
    torch.manual_seed(7)
    ref = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=STEPS, random_start=True)(x, y)
    close = torch.isclose(ours, ref, rtol=0, atol=1e-5).flatten(1).all(1)
    assert close.float().mean() >= 0.97  # a 1-ulp difference can flip a sign later in a rare trajectory
    assert abs(robust_acc(model, ours, y) - robust_acc(model, ref, y)) <= 1.0


def test_pgd_best_iterate_is_at_least_as_strong_as_torchattacks(robust_mlp):
    """roli's default keeps each example's worst iterate, so it may only find more errors, and not many more."""
    model, _, x, y = robust_mlp
    accs = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours = robust_acc(model, make_attack(eps=EPS, step_size=EPS / 4, steps=STEPS)(model, x, y), y)
        torch.manual_seed(seed)
        ref = robust_acc(model, torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=STEPS)(x, y), y)
        accs[seed] = (ours, ref)
        assert ref - 3.0 <= ours <= ref
    assert min(o for o, _ in accs.values()) < robust_acc(model, x, y) - 10  # both attacks really attack


def test_fgsm_matches_torchattacks(robust_mlp):
    model, _, x, y = robust_mlp
    ours = make_attack(name="fgsm", eps=EPS)(model, x, y)
    ref = torchattacks.FGSM(model, eps=EPS)(x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
