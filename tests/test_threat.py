"""roli.threat: L-inf and L2 balls intersected with the [0,1] box."""

from __future__ import annotations

import pytest
import torch

from roli.threat import L2Ball, LinfBall, make_ball

TOL = 1e-6


def linf(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().amax(1)


def l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x[0] = 0.0  # corners of the box: projection must clip to [0,1] too
    x[1] = 1.0
    return x


def far_points(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return x + 3 * torch.randn(x.shape, generator=g)


def test_make_ball_by_name():
    assert isinstance(make_ball("linf", 0.1), LinfBall)
    assert isinstance(make_ball("l2", 0.5), L2Ball)
    assert make_ball("l2", 0.5).eps == 0.5
    with pytest.raises(KeyError, match=r"\['l2', 'linf'\]"):
        make_ball("l1", 0.1)


@pytest.mark.parametrize("eps", [0.0, 0.03, 0.3])
def test_linf_projection_in_ball_and_box(x, eps):
    p = LinfBall(eps).project(far_points(x), x)
    assert linf(p - x).max() <= eps + TOL
    assert p.min() >= 0 and p.max() <= 1
    assert p.shape == x.shape and p.dtype == x.dtype
    # far points end on the boundary of the ball (or of the box): the projection is not a no-op shrink to x
    if eps > 0:
        assert linf(p[2:] - x[2:]).min() > 0.9 * eps


def test_linf_projection_is_exact_clipping(x):
    eps = 0.1
    z = far_points(x)
    expected = torch.clamp(torch.clamp(z, x - eps, x + eps), 0, 1)
    assert torch.equal(LinfBall(eps).project(z, x), expected)


@pytest.mark.parametrize("ball", [LinfBall(0.1), L2Ball(0.5)])
def test_projection_keeps_points_already_inside(x, ball):
    g = torch.Generator().manual_seed(2)
    delta = torch.rand(x.shape, generator=g) - 0.5
    if isinstance(ball, LinfBall):
        delta = delta * 2 * ball.eps * 0.9
    else:
        delta = delta / l2(delta).view(-1, 1, 1, 1) * ball.eps * 0.9
    inside = (x + delta).clamp(0, 1)
    torch.testing.assert_close(ball.project(inside, x), inside, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.25, 2.0])
def test_l2_projection_in_ball_and_box(x, eps):
    z = far_points(x)
    p = L2Ball(eps).project(z, x)
    assert l2(p - x).max() <= eps * (1 + 1e-5) + TOL
    assert p.min() >= 0 and p.max() <= 1
    if eps > 0:
        # x + delta * eps/|delta|, then the box clip: every coordinate moves towards z (or stays), none away
        d, pd = (z - x).flatten(1), (p - x).flatten(1)
        assert (d * pd >= 0).all()
        assert ((d * pd).sum(1) > 0).all()


def test_l2_projection_scales_radially_when_box_is_inactive():
    x = torch.full((3, 1, 4, 4), 0.5)
    delta = torch.randn(3, 1, 4, 4) * 0.01
    delta[0] *= 100  # far outside an eps=0.1 ball, but inside the box after scaling
    p = L2Ball(0.1).project(x + delta, x)
    torch.testing.assert_close(p[0] - x[0], delta[0] * 0.1 / delta[0].norm())
    torch.testing.assert_close(l2(p[:1] - x[:1]), torch.tensor([0.1]))


@pytest.mark.parametrize("ball", [LinfBall(0.1), L2Ball(1.0)])
def test_random_init_in_ball_and_box(x, ball):
    torch.manual_seed(0)
    r = ball.random_init(x)
    norm = linf if isinstance(ball, LinfBall) else l2
    assert r.shape == x.shape
    assert norm(r - x).max() <= ball.eps * (1 + 1e-5) + TOL
    assert r.min() >= 0 and r.max() <= 1
    assert not torch.equal(r, x)  # it is random, not the clean point
    assert (norm(r[2:] - x[2:]) > 0).all()


def test_linf_random_init_is_uniform_over_the_cube():
    eps = 0.1
    x = torch.full((64, 1, 16, 16), 0.5)  # far from the box edges
    torch.manual_seed(0)
    d = LinfBall(eps).random_init(x) - x
    assert d.abs().max() <= eps + TOL
    assert d.abs().max() > 0.99 * eps  # fills the cube, not a shrunken one
    assert abs(d.mean().item()) < 0.05 * eps
    assert d.std().item() == pytest.approx(eps / 3**0.5, rel=0.03)  # std of U(-eps, eps)


def test_random_init_depends_on_torch_seed(x):
    ball = L2Ball(0.5)
    torch.manual_seed(5)
    a = ball.random_init(x)
    torch.manual_seed(5)
    b = ball.random_init(x)
    torch.manual_seed(6)
    c = ball.random_init(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_linf_step_is_sign_of_gradient():
    x = torch.full((2, 1, 2, 2), 0.5)
    grad = torch.tensor([[[[3.0, -0.001], [0.0, -7.0]]], [[[1e-9, 2.0], [-1.0, 5.0]]]])
    out = LinfBall(0.1).step(x, grad, 0.05)
    expected = x + 0.05 * torch.tensor([[[[1.0, -1.0], [0.0, -1.0]]], [[[1.0, 1.0], [-1.0, 1.0]]]])
    torch.testing.assert_close(out, expected)


def test_l2_step_has_step_size_length_along_gradient():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 5, 5, generator=g)
    grad = torch.randn(4, 1, 5, 5, generator=g) * torch.tensor([1e-4, 1.0, 10.0, 1e3]).view(-1, 1, 1, 1)
    out = L2Ball(1.0).step(x, grad, 0.3)
    d = out - x
    torch.testing.assert_close(l2(d), torch.full((4,), 0.3))  # the same length whatever the gradient's scale
    cos = torch.nn.functional.cosine_similarity(d.flatten(1), grad.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones(4))


def test_l2_step_with_zero_gradient_is_finite():
    x = torch.rand(2, 1, 3, 3)
    out = L2Ball(1.0).step(x, torch.zeros_like(x), 0.3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, x)


def test_steps_do_not_modify_inputs(x):
    for ball in (LinfBall(0.1), L2Ball(0.5)):
        before = x.clone()
        z = far_points(x)
        z_before = z.clone()
        ball.project(ball.step(z, torch.randn_like(z), 0.1), x)
        ball.random_init(x)
        assert torch.equal(x, before) and torch.equal(z, z_before)
