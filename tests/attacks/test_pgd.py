"""roli.attacks: PGD and FGSM on [0,1] inputs (L-inf and L2), model state handling, and attack strength."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks import ATTACKS, build_attack, make_attack
from roli.attacks.pgd import FGSM, PGD, PGDConfig, margin_loss
from roli.config import ConfigError, DataConfig, ThreatConfig
from roli.data import build_data, make_loader
from roli.evaluation.accuracy import accuracy
from tiny_models import RaisesOnCall, SmallNet, adversarially_trained_mlp, grad_flags, mixed_state, modes


@pytest.fixture
def net(bn_net) -> SmallNet:
    """conftest's `bn_net`, under this module's short name."""
    return bn_net


@pytest.fixture
def batch(small_batch):
    """conftest's `small_batch`, under this module's short name."""
    return small_batch


pytestmark = pytest.mark.usefixtures("one_thread")

# The PGD family (PGD, FGSM); AutoAttack wraps another library and has its own tests in test_autoattack.py.
NAMES = [name for name in ATTACKS.names() if issubclass(ATTACKS.get(name), PGD)]
EPS = {"linf": 0.1, "l2": 0.6}
STEP = {"linf": 0.04, "l2": 0.25}


def make(name: str, **kw) -> PGD:
    """PGD/FGSM with the threat model in the keyword arguments; fields FGSM does not have are dropped."""
    if name == "fgsm":
        kw = {k: v for k, v in kw.items() if k in ("eps", "norm", "loss")}
    else:
        kw.setdefault("steps", 3)
    return make_attack(name, **kw)  # type: ignore[return-value]


def dist(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """The attack's per-example objective as one float64 key: misclassified first, then loss."""
    with torch.no_grad():
        logits = model(x)
    per = F.cross_entropy(logits, y, reduction="none") if loss == "ce" else margin_loss(logits, y)
    return per.double() + (logits.argmax(1) != y).double() * 1e6  # float64: 1e6 + loss keeps the loss digits


# --------------------------------------------------------------------------- threat model and shapes


def test_registered_attacks():
    assert set(NAMES) >= {"pgd", "fgsm"}
    assert ATTACKS.get("pgd") is PGD and ATTACKS.get("fgsm") is FGSM


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", NAMES)
def test_x_adv_in_box_and_ball(net, batch, name, norm):
    x, y = batch
    torch.manual_seed(0)
    x_adv = make(name, norm=norm, eps=EPS[norm], step_size=STEP[norm])(net, x, y)
    d = dist(x_adv - x, norm)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert d.max() <= EPS[norm] * (1 + 1e-5) + 1e-6
    assert d.max() >= 0.5 * EPS[norm]  # it really perturbs, up to the budget


@pytest.mark.parametrize("name", NAMES)
def test_attack_raises_the_loss(net, batch, name):
    x, y = batch
    net.eval()
    torch.manual_seed(0)
    x_adv = make(name, eps=0.1, step_size=0.04)(net, x, y)
    with torch.no_grad():
        clean = F.cross_entropy(net(x), y, reduction="none")
        adv = F.cross_entropy(net(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean() + 0.05
    assert (adv >= clean - 1e-6).float().mean() >= 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_kept_and_input_untouched(net, batch, name, dtype):
    net = net.to(dtype)
    x, y = batch
    x = x.to(dtype).requires_grad_(True)
    before = x.detach().clone()
    x_adv = make(name, eps=0.1, step_size=0.04)(net, x, y)
    assert x_adv.shape == x.shape
    assert x_adv.dtype == dtype
    assert x_adv.device == x.device
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert torch.equal(x.detach(), before)
    assert x.grad is None


@pytest.mark.parametrize("name", NAMES)
def test_fgsm_and_pgd_step_from_clean_match_the_formula(net, batch, name):
    """One full step from the clean point: clip(x + eps * sign(grad_x CE)), computed here by hand."""
    x, y = batch
    net.eval()
    eps = 0.07
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xr), y, reduction="sum"), xr)
    expected = (x + eps * g.sign()).clamp(0, 1)
    kw = {"random_start": False, "steps": 1, "step_size": eps} if name == "pgd" else {}
    x_adv = make(name, eps=eps, select="last", **kw)(net, x, y)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)


def test_fgsm_refuses_pgd_fields():
    """FGSM has no steps, step size or random start: giving them is an unknown-key error, never silently ignored."""
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['steps', 'step_size', 'random_start'\]"):
        make_attack("fgsm", eps=0.2, steps=9, step_size=0.01, random_start=True)
    atk = make("fgsm", eps=0.2)
    assert (atk.config.steps, atk.config.step_size, atk.config.random_start) == (1, 0.2, False)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_x_adv(net, batch, name, norm):
    x, y = batch
    atk = make(name, norm=norm, eps=EPS[norm], step_size=STEP[norm], restarts=2)
    torch.manual_seed(123)
    a = atk(net, x, y)
    torch.manual_seed(123)
    b = atk(net, x, y)
    assert torch.equal(a, b)
    torch.manual_seed(124)
    c = atk(net, x, y)
    if name == "fgsm":
        assert torch.equal(a, c)  # no random start: the seed does not matter
    else:
        assert not torch.equal(a, c)  # the random start follows the torch seed


@pytest.mark.parametrize("name", NAMES)
def test_attack_runs_in_eval_mode(net, batch, name):
    """With BatchNorm batch statistics or Dropout active, the x_adv of a train-mode model would differ."""
    x, y = batch
    atk = make(name, eps=0.1, step_size=0.04)
    net.train()
    torch.manual_seed(7)
    a = atk(net, x, y)
    net.eval()
    torch.manual_seed(7)
    b = atk(net, x, y)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- model state


@pytest.mark.parametrize("fail_on", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_state_restored_when_forward_raises(net, batch, name, fail_on):
    x, y = batch
    mixed_state(net)
    model = RaisesOnCall(net, fail_on)
    before_modes, before_flags = modes(model), grad_flags(model)
    with pytest.raises(RuntimeError, match="boom"):
        make(name, eps=0.1, step_size=0.04)(model, x, y)
    assert model.calls == fail_on
    assert modes(model) == before_modes
    assert grad_flags(model) == before_flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_grads_untouched(net, batch, name):
    x, y = batch
    atk = make(name, eps=0.1, step_size=0.04)
    atk(net, x, y)
    assert all(p.grad is None for p in net.parameters())
    # existing gradients (mid training step) are neither accumulated into nor cleared
    F.cross_entropy(net(x), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    atk(net, x, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))


# --------------------------------------------------------------------------- small pieces


def test_margin_loss_values():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5], [1.0, 1.0, 1.0]])
    y = torch.tensor([0, 0, 2])
    torch.testing.assert_close(margin_loss(logits, y), torch.tensor([-1.0, 3.0, 0.0]))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", NAMES)
def test_eps_zero_returns_the_clean_input(net, batch, name, norm):
    x, y = batch
    x_adv = make(name, norm=norm, eps=0.0, step_size=0.05)(net, x, y)
    assert torch.equal(x_adv, x)


class Scripted(nn.Module):
    """Returns scripted logits on each call (plus a tiny input term so the gradient pushes every pixel up)."""

    def __init__(self, script: list[list[float]]) -> None:
        super().__init__()
        self.script, self.calls = torch.tensor(script), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.script[self.calls].expand(len(x), -1)
        self.calls += 1
        return logits + 1e-4 * x.flatten(1).sum(1, keepdim=True) * torch.tensor([-1.0, 0.0, 0.0])


def test_best_prefers_a_misclassified_iterate_over_a_higher_loss_correct_one():
    """Iterates 0..3 are x + k * step. Iterate 1 is misclassified with a low CE; iterate 2 is correct with the
    highest CE. 'best' must return iterate 1 (misclassified first, like AutoAttack), 'last' iterate 3."""
    script = [
        [0.1, 0.0, 0.0],  # iterate 0: correct, CE 1.035
        [1.0, 1.1, -9.0],  # iterate 1: wrong (class 1), CE 0.74
        [0.05, 0.0, 0.0],  # iterate 2: correct, CE 1.065 (the highest)
        [5.0, 0.0, 0.0],  # iterate 3 (final): correct, CE 0.013
    ]
    x, y = torch.full((1, 1, 2, 2), 0.2), torch.tensor([0])
    cfg = PGDConfig(step_size=0.1, steps=3, random_start=False)
    threat = ThreatConfig(eps=0.5)
    best = build_attack(cfg, threat)(Scripted(script), x, y)
    torch.testing.assert_close(best, torch.full_like(x, 0.3))
    last = build_attack(dataclasses.replace(cfg, select="last"), threat)(Scripted(script), x, y)
    torch.testing.assert_close(last, torch.full_like(x, 0.5))
    script[1] = [1.0, 0.9, -9.0]  # iterate 1 now correct too: the highest CE (iterate 2) wins
    best = build_attack(cfg, threat)(Scripted(script), x, y)
    torch.testing.assert_close(best, torch.full_like(x, 0.4))


# --------------------------------------------------------------------------- on an adversarially trained model

TRAIN_EPS = 0.1
EVAL_EPS = 0.2  # above the training budget, so the attacks separate clearly


@pytest.fixture(scope="module")
def robust(one_thread):
    """An MLP adversarially trained (PGD-3, eps 0.1) on 2,000 shipped MNIST digits (all 10 classes): ~1 s on one core."""
    splits = build_data(DataConfig(name="mnist", train_limit=2000, test_limit=500))
    xs, ys = splits.train.images.float() / 255, splits.train.labels
    model = adversarially_trained_mlp(xs, ys)
    loader = make_loader(splits.test, 250, shuffle=False)
    x_test = torch.cat([x for x, _ in loader])
    y_test = torch.cat([y for _, y in loader])
    return model, loader, x_test, y_test


def acc(model, loader, attack=None) -> float:
    torch.manual_seed(0)
    return accuracy(model, loader, attack)["acc"]


def test_accuracy_ordering_pgd_fgsm_clean(robust):
    model, loader, *_ = robust
    clean = acc(model, loader)
    fgsm = acc(model, loader, make("fgsm", eps=EVAL_EPS))
    pgd = acc(model, loader, make("pgd", eps=EVAL_EPS, step_size=EVAL_EPS / 4, steps=10))
    assert clean >= 80  # the model learned (10 balanced classes: chance is 10%)
    assert pgd <= fgsm <= clean
    assert clean - pgd >= 10
    assert fgsm - pgd >= 2  # 10 steps find more than one
    # adversarial training worked: at its own budget the model stays fairly robust
    # (10 balanced classes, so 45% is far above the 10% chance level)
    assert acc(model, loader, make("pgd", eps=TRAIN_EPS, step_size=0.025, steps=10)) >= 45


def test_margin_loss_attack(robust):
    model, loader, *_ = robust
    clean = acc(model, loader)
    cfg = {"eps": EVAL_EPS, "step_size": EVAL_EPS / 4, "steps": 10}
    ce = acc(model, loader, make("pgd", **cfg))
    margin = acc(model, loader, make("pgd", loss="margin", **cfg))
    assert clean - margin >= 10
    assert abs(margin - ce) <= 5  # a comparable attack
    assert acc(model, loader, make("fgsm", eps=EVAL_EPS, loss="margin")) <= clean - 5


def test_more_steps_and_restarts_are_not_weaker(robust):
    model, loader, *_ = robust
    base = {"eps": EVAL_EPS, "step_size": EVAL_EPS / 4}
    one = acc(model, loader, make("pgd", steps=1, **base))
    ten = acc(model, loader, make("pgd", steps=10, **base))
    three_restarts = acc(model, loader, make("pgd", steps=10, restarts=3, **base))
    assert ten <= one - 5
    assert three_restarts <= ten


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_gives_clean_accuracy_exactly(robust, norm):
    model, loader, *_ = robust
    result = accuracy(model, loader, make("pgd", norm=norm, eps=0.0, step_size=0.05))
    assert result["acc"] == acc(model, loader)
    assert result["n"] == 500


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none") if loss == "ce" else margin_loss(logits, y)


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("name", ["pgd"])
def test_best_iterate_at_least_as_strong_as_last(robust, name, loss):
    """Same seed, so both runs follow the same path and 'last' is one of the candidates 'best' chose from.

    'best' ranks iterates by (misclassified, loss): an example wrong under the last iterate is wrong under the best
    one, and at equal correctness the best iterate's loss is at least the last one's.
    """
    model, _, x, y = robust
    cfg, threat = PGDConfig(step_size=EVAL_EPS / 2, steps=10, loss=loss), ThreatConfig(eps=EVAL_EPS)
    torch.manual_seed(3)
    best = build_attack(cfg, threat)(model, x, y)
    torch.manual_seed(3)
    last = build_attack(dataclasses.replace(cfg, select="last"), threat)(model, x, y)
    with torch.no_grad():
        lb, ll = model(best), model(last)
    wrong_b, wrong_l = lb.argmax(1) != y, ll.argmax(1) != y
    fb, fl = per_example_loss(lb, y, loss), per_example_loss(ll, y, loss)
    assert not (wrong_l & ~wrong_b).any()
    both_right, both_wrong = ~wrong_b & ~wrong_l, wrong_b & wrong_l
    assert (fb[both_right] >= fl[both_right] - 1e-4).all()
    assert (fb[both_wrong] >= fl[both_wrong] - 1e-4).all()
    assert wrong_b.sum() >= wrong_l.sum()
    if name == "pgd":  # with a large step the last iterate is often not the worst one: 'best' must differ
        strictly = (wrong_b & ~wrong_l) | (both_right & (fb > fl + 1e-4)) | (both_wrong & (fb > fl + 1e-4))
        assert strictly.sum() >= 2


def test_restarts_keep_the_per_example_worst(robust):
    model, _, x, y = robust
    cfg, threat = PGDConfig(step_size=EVAL_EPS / 4, steps=3), ThreatConfig(eps=EVAL_EPS)
    torch.manual_seed(11)
    one = build_attack(cfg, threat)(model, x, y)
    torch.manual_seed(11)  # the first restart of three repeats the single run
    three = build_attack(dataclasses.replace(cfg, restarts=3), threat)(model, x, y)
    s1, s3 = score(model, one, y), score(model, three, y)
    assert (s3 >= s1 - 1e-4).all()
    assert (s3 > s1 + 1e-3).sum() >= 10  # the extra random starts find worse points on some examples


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_best_iterate_has_the_highest_loss_among_misclassified(robust, loss):
    """Among iterates that all misclassify, the highest loss wins: a float32 `loss + 1e6 * wrong` score would round
    loss differences below 0.0625 away and keep an earlier, weaker iterate."""
    model, _, x, y = robust
    cfg, threat = PGDConfig(step_size=EVAL_EPS / 2, steps=10, loss=loss), ThreatConfig(eps=EVAL_EPS)
    torch.manual_seed(3)
    best = build_attack(cfg, threat)(model, x, y)
    torch.manual_seed(3)
    last = build_attack(dataclasses.replace(cfg, select="last"), threat)(model, x, y)
    fn = (lambda lg, t: F.cross_entropy(lg, t, reduction="none")) if loss == "ce" else margin_loss
    with torch.no_grad():
        lb, ll = model(best), model(last)
    both_wrong = (lb.argmax(1) != y) & (ll.argmax(1) != y)
    assert both_wrong.sum() >= 20
    assert (fn(lb, y)[both_wrong] >= fn(ll, y)[both_wrong] - 1e-4).all()
