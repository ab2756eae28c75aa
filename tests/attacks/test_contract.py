"""The contract every registered attack keeps (the ATTACKS registry's entries, AutoAttack included, each on a tiny
budget): x_adv in [0,1] and in the eps ball, eps 0 returns the clean input, the same torch seed gives the same x_adv,
the model attacked in eval mode with frozen parameters and its train/eval modes and requires_grad flags restored
(also when the model raises), and `evaluate`'s verdicts agree with the model.

A new attack is picked up from the registry; it only has to state its cheap setting in CHEAP.
"""

from __future__ import annotations

import pytest
import torch

from roli.attacks import ATTACKS, make_attack
from tiny_models import RaisesOnCall, grad_flags, mixed_state, modes

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"linf": 0.1, "l2": 0.6}
# Per registered attack, its cheapest setting that still searches, given eps (a new attack must add one here).
CHEAP = {
    "pgd": lambda eps: {"steps": 3, "step_size": eps / 2.5},
    "fgsm": lambda eps: {},
    "fgsm_rs": lambda eps: {},
    "nfgsm": lambda eps: {},
    # one sub-attack, 5 iterations, one restart; seed None = drawn from torch's generator (so the torch seed fixes it)
    "autoattack": lambda eps: {"version": "custom", "attacks": ("apgd-ce",), "n_iter": 5, "apgd_restarts": 1},
}
NAMES = ATTACKS.names()
# Training attacks whose x_adv may leave the eps ball by design (N-FGSM: noise in 2 eps, a step of eps, no
# projection; de Jorge et al. 2022), with the radius it stays within; `evaluate` still keeps to the ball.
LEAVES_BALL = {"nfgsm": 3.0}
ONE_FORWARD = {"fgsm_rs", "nfgsm"}  # a single model call per attack (with loss ce): the model raises on that one


def make(name: str, norm: str = "linf", eps: float | None = None):
    eps = EPS[norm] if eps is None else eps
    return make_attack(name, eps=eps, norm=norm, **CHEAP[name](EPS[norm]))


def dist(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def test_every_attack_has_a_cheap_setting():
    assert set(NAMES) == set(CHEAP), "add the new attack's cheap setting to CHEAP"
    assert {"pgd", "fgsm", "autoattack"} <= set(NAMES)


@pytest.mark.parametrize("norm", sorted(EPS))
@pytest.mark.parametrize("name", NAMES)
def test_x_adv_in_box_and_ball_input_untouched(bn_net, small_batch, name, norm):
    x, y = small_batch
    before = x.clone()
    torch.manual_seed(0)
    x_adv = make(name, norm)(bn_net, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert torch.equal(x, before)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = dist(x_adv - x, norm)
    assert d.max() <= LEAVES_BALL.get(name, 1.0) * EPS[norm] * (1 + 1e-5) + 1e-6
    assert d.max() > 0  # it attacks (AutoAttack moves only the examples it breaks: 2 of the 12 here)


@pytest.mark.parametrize("name", NAMES)
def test_eps_zero_returns_the_clean_input(bn_net, small_batch, name):
    x, y = small_batch
    assert torch.equal(make(name, eps=0.0)(bn_net, x, y), x)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_x_adv(bn_net, small_batch, name):
    x, y = small_batch
    atk = make(name)
    runs = []
    for seed in (3, 3):
        torch.manual_seed(seed)
        runs.append(atk(bn_net, x, y))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_during_the_attack_and_state_restored(bn_net, small_batch, name):
    x, y = small_batch
    mixed_state(bn_net)
    seen = []
    bn_net.register_forward_pre_hook(
        lambda m, inp: seen.append((any(mod.training for mod in m.modules()), any(grad_flags(m)))))
    before_modes, before_flags = modes(bn_net), grad_flags(bn_net)
    running = bn_net.bn.running_mean.clone()
    make(name)(bn_net, x, y)
    assert seen and all(s == (False, False) for s in seen)  # eval mode, frozen parameters while attacking
    assert modes(bn_net) == before_modes and grad_flags(bn_net) == before_flags
    assert torch.equal(bn_net.bn.running_mean, running)  # no BatchNorm statistics update
    assert all(p.grad is None for p in bn_net.parameters())  # input gradients only


@pytest.mark.parametrize("name", NAMES)
def test_state_restored_when_the_model_raises(bn_net, small_batch, name):
    x, y = small_batch
    mixed_state(bn_net)
    model = RaisesOnCall(bn_net, 1 if name in ONE_FORWARD else 2)
    before_modes, before_flags = modes(model), grad_flags(model)
    with pytest.raises(RuntimeError, match="boom"):
        make(name)(model, x, y)
    assert modes(model) == before_modes and grad_flags(model) == before_flags


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_verdicts_agree_with_the_model(bn_net, small_batch, name):
    """`evaluate`: clean = correct on x; robust only if clean; every non-robust example's x_adv is misclassified,
    and every x_adv lies in the box and the ball."""
    x, y = small_batch
    bn_net.eval()
    torch.manual_seed(0)
    out = make(name).evaluate(bn_net, x, y)
    with torch.no_grad():
        assert torch.equal(out.clean, bn_net(x).argmax(1) == y)
        wrong = bn_net(out.x_adv).argmax(1) != y
    assert not (out.robust & ~out.clean).any()
    assert wrong[~out.robust].all()
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert dist(out.x_adv - x, "linf").max() <= EPS["linf"] + 1e-6
