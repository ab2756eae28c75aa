"""Sanity checks run before a robust accuracy is reported, in the spirit of AutoAttack's own checks
(Croce & Hein, arXiv 2003.01690; the gradient-masking signs of Athalye et al., arXiv 1802.00420).

Each check returns a CheckResult (name, passed, message, details) that goes into the results JSON and the report;
a failed check is also logged as a warning with its explanation. None of them is ever skipped silently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks.base import attack_mode
from roli.evaluation.ordering import CheckResult, check_result


def check_input_range(x: torch.Tensor) -> CheckResult:
    """The batch lies in [0,1]: eps is in pixel units only if the model normalises inside."""
    lo, hi = float(x.min()), float(x.max())
    return check_result("input_range", lo >= 0 and hi <= 1, f"inputs lie in [0,1] (min {lo:.3g}, max {hi:.3g})",
                   f"inputs span [{lo:.3g}, {hi:.3g}], not [0,1]: eps is measured in [0,1] pixel units and the "
                   "box constraint clips to [0,1], so the threat model is wrong (normalise inside the model)",
                   min=lo, max=hi)


def check_logits(model: nn.Module, x: torch.Tensor, alpha: float = 1e-5) -> CheckResult:
    """Probabilities (non-negative rows summing to 1) make cross-entropy attacks weak: flag them."""
    with attack_mode(model), torch.no_grad():
        out = model(x).float()
    probs = bool((out.min() > -alpha) & (out.max() < 1 + alpha) & ((out.sum(1) - 1).abs() < alpha).all())
    return check_result("logits", not probs, "the model outputs logits (rows are not probability vectors)",
                   "the model's outputs look like probabilities (non-negative rows summing to 1): attacks on "
                   "cross-entropy of softmax(probabilities) get flat gradients and overestimate robustness; return "
                   "logits", row_sum_min=float(out.sum(1).min()), row_sum_max=float(out.sum(1).max()))


def check_deterministic(model: nn.Module, x: torch.Tensor, repeats: int = 3, rtol: float = 1e-5) -> CheckResult:
    """In eval mode two forwards must agree; random inference needs EOT attacks (AutoAttack version rand)."""
    with attack_mode(model), torch.no_grad():
        outs = [model(x).float() for _ in range(repeats)]
    scale = outs[0].abs().max().clamp_min(1e-12)
    diff = max(float((o - outs[0]).abs().max() / scale) for o in outs[1:])
    flips = sum(int((o.argmax(1) != outs[0].argmax(1)).sum()) for o in outs[1:])
    return check_result("deterministic", diff <= rtol, f"{repeats} forwards in eval mode agree (max rel. diff {diff:.2g})",
                   f"{repeats} forwards in eval mode differ (max rel. diff {diff:.2g}, {flips} changed predictions): "
                   "random inference (e.g. dropout in forward) masks gradients; evaluate with expectation over "
                   "transformation (AutoAttack version: rand) or remove the randomness", max_rel_diff=diff,
                   changed_predictions=flips)


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    """Per-example input gradients of the cross-entropy must be non-zero, else gradient attacks get no signal."""
    with attack_mode(model), torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    finite = bool(torch.isfinite(grad).all())
    nan = "" if finite else " and some gradients are not finite"
    return check_result("gradients", zero == 0 and finite, f"input gradients are non-zero for all {len(x)} points",
                   f"{zero} of {len(x)} points have an all-zero input gradient{nan}: gradient attacks cannot move "
                   "them (saturated softmax, non-differentiable layers or gradient masking); PGD/APGD numbers may "
                   "overestimate robustness",
                   zero_gradient_points=zero, n=len(x), finite=finite)


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[CheckResult]:
    """The checks that need only the model and one batch."""
    return [check_input_range(x), check_logits(model, x), check_deterministic(model, x),
            check_gradients(model, x, y)]
