"""Threat models: norm balls around clean inputs in [0,1] pixel space (MadryLab-style project/step/init)."""

from __future__ import annotations

import torch

from roli.registry import Registry

BALLS: Registry[type[Ball]] = Registry("norm")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _draw(x: torch.Tensor, shard, fill) -> torch.Tensor:
    """Random numbers shaped like x; with a shard (start, size), drawn for the whole global batch of `size` rows and
    sliced, so that every rank of a data-parallel job draws what a single process would."""
    if shard is None:
        return fill(torch.empty_like(x))
    full = fill(torch.empty((shard.size, *x.shape[1:]), dtype=x.dtype, device=x.device))
    return full[shard.start:shard.start + len(x)]


class Ball:
    """An eps-ball intersected with the [0,1] box."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The point of the ball around `x` (and of the [0,1] box) closest to `x_adv`, per example."""
        raise NotImplementedError

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """One ascent step of length `step_size` along the norm's steepest direction of `grad` (not projected)."""
        raise NotImplementedError

    def random_init(self, x: torch.Tensor, shard=None) -> torch.Tensor:
        """A random start inside the ball and the box. `shard` (roli.distributed.Shard): draw for the whole global
        batch and keep this rank's rows, so data-parallel ranks start where a single process would."""
        raise NotImplementedError


@BALLS.register("linf")
class LinfBall(Ball):
    """The L-inf ball: every pixel moves at most eps (PGD's and FGSM's usual threat model, e.g. eps 8/255)."""

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Clip each pixel to [x - eps, x + eps], then to [0, 1]."""
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """A signed-gradient step: every pixel moves by `step_size`."""
        return x_adv + step_size * grad.sign()

    def random_init(self, x: torch.Tensor, shard=None) -> torch.Tensor:
        """Uniform noise in [-eps, eps] per pixel (Madry et al.'s random start), clipped to [0, 1]."""
        noise = _draw(x, shard, lambda t: t.uniform_(-self.eps, self.eps))
        return (x + noise).clamp_(0, 1)


@BALLS.register("l2")
class L2Ball(Ball):
    """The L2 ball: the whole perturbation of an example has L2 norm at most eps (in [0,1] pixel units)."""

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Shrink a perturbation longer than eps back to length eps, then clip to [0, 1]."""
        delta = x_adv - x
        factor = (self.eps / _flat_norm(delta)).clamp(max=1.0)
        return (x + delta * factor).clamp_(0, 1)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """A step of L2 length `step_size` along the gradient's direction."""
        return x_adv + step_size * grad / _flat_norm(grad)

    def random_init(self, x: torch.Tensor, shard=None) -> torch.Tensor:
        """A random direction with a radius drawn uniformly from [0, eps], projected into the box."""
        # Uniform direction, radius uniform in [0, eps]: a simple, common choice for L2 random starts.
        noise = _draw(x, shard, lambda t: t.normal_())
        radius = _draw(x[:, :1, :1, :1] if x.dim() == 4 else x[:, :1], shard, lambda t: t.uniform_(0, 1))
        radius = radius.reshape(-1, *([1] * (x.dim() - 1))) * self.eps
        return self.project(x + noise / _flat_norm(noise) * radius, x)


def make_ball(norm: str, eps: float) -> Ball:
    """The registered ball for `norm` (`linf` or `l2`) with radius `eps`, e.g. `make_ball("linf", 8 / 255)`."""
    return BALLS.get(norm)(eps)
