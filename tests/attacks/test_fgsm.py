"""roli.attacks.fgsm: FGSM-RS stays in the eps ball, N-FGSM may leave it (not the box), both match their formulas;
PGD's `kl` loss (TRADES) ascends the KL to the clean prediction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from roli.attacks import make_attack
from roli.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.1


def linf(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().amax(1)


def test_fgsm_rs_stays_in_the_ball_and_box_and_uses_its_step(bn_net, small_batch):
    x, y = small_batch
    torch.manual_seed(0)
    x_adv = make_attack("fgsm_rs", eps=EPS)(bn_net, x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and linf(x_adv - x).max() <= EPS + 1e-6
    # the formula: delta ~ U(-eps, eps) (the same draw: same seed), + 1.25 eps sign(grad), clipped to the ball/box
    torch.manual_seed(0)
    start = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1).requires_grad_(True)
    bn_net.eval()
    (g,) = torch.autograd.grad(F.cross_entropy(bn_net(start), y, reduction="sum"), start)
    expected = torch.min(torch.max(start.detach() + 1.25 * EPS * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)


def test_nfgsm_leaves_the_ball_up_to_noise_plus_step(bn_net, small_batch):
    x, y = small_batch
    torch.manual_seed(0)
    x_adv = make_attack("nfgsm", eps=EPS)(bn_net, x, y)
    d = linf(x_adv - x)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert d.max() > 1.5 * EPS  # not projected onto the eps ball (de Jorge et al.)
    assert d.max() <= 3 * EPS + 1e-6  # noise 2 eps + step eps
    torch.manual_seed(0)
    start = (x + torch.empty_like(x).uniform_(-2 * EPS, 2 * EPS)).clamp(0, 1).requires_grad_(True)
    bn_net.eval()
    (g,) = torch.autograd.grad(F.cross_entropy(bn_net(start), y, reduction="sum"), start)
    torch.testing.assert_close(x_adv, (start.detach() + EPS * g.sign()).clamp(0, 1), rtol=0, atol=1e-6)


def test_nfgsm_evaluate_stays_in_the_threat_model(bn_net, small_batch):
    x, y = small_batch
    torch.manual_seed(0)
    out = make_attack("nfgsm", eps=EPS).evaluate(bn_net, x, y)
    assert linf(out.x_adv - x).max() <= EPS + 1e-6


def test_one_step_attacks_take_only_their_own_fields():
    with pytest.raises(ConfigError, match="unknown key"):
        make_attack("fgsm_rs", eps=EPS, steps=3)
    with pytest.raises(ConfigError, match="unknown key"):
        make_attack("nfgsm", eps=EPS, step_size=0.1)
    with pytest.raises(ConfigError, match="step is a multiple of eps"):
        make_attack("fgsm_rs", eps=EPS, step=0)


def test_kl_loss_raises_the_kl_to_the_clean_prediction(bn_net, small_batch):
    x, y = small_batch
    bn_net.eval()
    torch.manual_seed(0)
    x_adv = make_attack("pgd", eps=EPS, steps=5, step_size=EPS / 4, loss="kl", select="last")(bn_net, x, y)
    torch.manual_seed(0)
    noise = make_attack("pgd", eps=EPS, steps=1, step_size=1e-9, loss="kl", select="last")(bn_net, x, y)
    with torch.no_grad():
        p = F.softmax(bn_net(x), 1)

        def kl(z):
            return F.kl_div(F.log_softmax(bn_net(z), 1), p, reduction="none").sum(1)
        assert kl(x_adv).mean() > 3 * kl(noise).mean()  # far above the random start's KL
    assert linf(x_adv - x).max() <= EPS + 1e-6
    with pytest.raises(ConfigError, match="training attack"):
        make_attack("pgd", eps=EPS, loss="kl").evaluate(bn_net, x, y)
