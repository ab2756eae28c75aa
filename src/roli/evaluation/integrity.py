"""Evaluation integrity: the signals reviewers use to spot gradient masking, beside the ordering check.

A robust accuracy is only as good as the attack behind it. Athalye et al. (arXiv 1802.00420) and Croce & Hein
(arXiv 2003.01690) list the signs that an attack is failing rather than the model being robust; prompt tuning in
particular is known to obfuscate gradients (ADAPT, TMLR 2025). `roli eval --suite full` computes four flags from its
own numbers, each with its numbers, threshold, verdict (pass / flag / not run) and a one-line explanation:

- `pgd_steps`: PGD-10 minus PGD-100 with 5 restarts > PGD_STEPS_GAP points: 10 steps are too few, or the loss
  surface is masked so that only long, restarted searches find the adversarial points.
- `eps_sweep`: on the eps sweep, accuracy rising with eps by more than one image (a larger ball contains the smaller
  one), or accuracy at the large eps (where every image can be moved to one grey image) above NEAR_ZERO %.
- `pgd_autoattack`: PGD-10 minus AutoAttack > AA_GAP points: AutoAttack's margin loss, targeted and gradient-free
  parts find what a cross-entropy PGD misses, the textbook sign of masked cross-entropy gradients.
- `prompt_path` (VPT): whether the attack differentiates through the prompt tokens. roli's prompts are parameters
  of the attacked model (`roli.transfer.prompt`), so white-box PGD's input gradient is taken through the prompted
  forward, the adaptive attack ADAPT asks for; the check confirms it on one batch (every prompt gets a non-zero
  gradient of the attack loss in eval mode) and is `not run` for models without prompts.

The thresholds are named constants here, so a report can state them; a flag is a reason to look, not a verdict on
the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from roli.attacks.base import attack_mode

log = logging.getLogger(__name__)

PGD_STEPS_GAP = 2.0  # points: PGD-10 may exceed PGD-100 x 5 restarts by this much
AA_GAP = 3.0  # points: PGD-10 may exceed AutoAttack by this much (AutoAttack is usually 0.5-2 points below PGD)
NEAR_ZERO = 5.0  # %: accuracy allowed at the sweep's large eps
PROBE_STEPS, PROBE_RESTARTS = 100, 5  # the stronger PGD the full suite runs for `pgd_steps`

Verdict = Literal["pass", "flag", "not run"]


@dataclass(frozen=True)
class Flag:
    """One integrity signal: its name, verdict, the sentence a person reads, its threshold and the numbers."""
    name: str
    verdict: Verdict
    message: str
    threshold: float | None = None
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """As plain data, for the results JSON and the report."""
        return asdict(self)


def _flag(name: str, bad: bool, ok: str, problem: str, threshold: float | None, **numbers) -> Flag:
    """A pass or a flag (the flag logged as a warning)."""
    if bad:
        log.warning("integrity %s flagged: %s", name, problem)
    return Flag(name, "flag" if bad else "pass", problem if bad else ok, threshold, numbers)


def pgd_steps_gap(pgd10: float | None, pgd100: float | None, threshold: float = PGD_STEPS_GAP) -> Flag:
    """PGD-10 vs PGD-100 with restarts (accuracies in %): a large gap means PGD-10 is too weak or masked."""
    if pgd10 is None or pgd100 is None:
        return Flag("pgd_steps", "not run", "PGD-100 with restarts was not run (roli eval --suite full runs it)",
                    threshold)
    gap = pgd10 - pgd100
    return _flag("pgd_steps", gap > threshold,
                 f"PGD-10 {pgd10:.2f}% vs PGD-100x{PROBE_RESTARTS} {pgd100:.2f}%: gap {gap:.2f} <= {threshold:g} points",
                 f"PGD-10 {pgd10:.2f}% but PGD-100x{PROBE_RESTARTS} {pgd100:.2f}% (gap {gap:.2f} > {threshold:g} "
                 "points): 10 steps are too weak or the gradients are masked; report the stronger attack",
                 threshold, pgd10=pgd10, pgd100=pgd100, gap=gap)


def sweep_flag(points: Sequence[Mapping] | None, n: int | None, near_zero: float = NEAR_ZERO) -> Flag:
    """The eps sweep ({eps, acc, large}): accuracy must not rise by more than one image (100/n points) as eps
    grows, and must be <= near_zero % at the large eps."""
    if not points:
        return Flag("eps_sweep", "not run", "no eps sweep (roli eval --suite full or sweep runs one)", near_zero)
    pts = sorted(points, key=lambda p: p["eps"])
    noise = 100.0 / n if n else 0.0  # one image
    rises = [f"eps {a['eps']:.4g}: {a['acc']:.2f}% -> {b['eps']:.4g}: {b['acc']:.2f}%"
             for a, b in pairwise(pts) if b["acc"] > a["acc"] + noise + 1e-9]
    large = [p for p in pts if p.get("large")] or pts[-1:]
    left = large[-1]["acc"] > near_zero
    problems = ([f"accuracy rises with eps ({'; '.join(rises)})"] if rises else []) + (
        [f"at the large eps {large[-1]['eps']:.4g} accuracy is still {large[-1]['acc']:.2f}% (> {near_zero:g}%)"]
        if left else [])
    shown = ", ".join(f"{p['eps']:.4g}: {p['acc']:.2f}%" for p in pts)
    return _flag("eps_sweep", bool(problems), f"accuracy falls with eps to {large[-1]['acc']:.2f}% ({shown})",
                 "; ".join(problems) + ": a larger ball holds every point of a smaller one, so the attack is "
                 "failing (gradient masking)", near_zero, points=[[p["eps"], p["acc"]] for p in pts],
                 rises=rises, large_eps=large[-1]["eps"], large_acc=large[-1]["acc"], one_image=noise)


def aa_gap(pgd: float | None, aa: float | None, threshold: float = AA_GAP) -> Flag:
    """PGD-10 vs AutoAttack (%): AutoAttack far below PGD means PGD's cross-entropy gradients mislead it."""
    if pgd is None or aa is None:
        return Flag("pgd_autoattack", "not run", "PGD or AutoAttack was not run", threshold)
    gap = pgd - aa
    return _flag("pgd_autoattack", gap > threshold,
                 f"PGD-10 {pgd:.2f}% vs AutoAttack {aa:.2f}%: gap {gap:.2f} <= {threshold:g} points",
                 f"PGD-10 {pgd:.2f}% but AutoAttack {aa:.2f}% (gap {gap:.2f} > {threshold:g} points): PGD's "
                 "gradients are masked or misleading; trust the AutoAttack number", threshold, pgd=pgd,
                 autoattack=aa, gap=gap)


def prompt_flag(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Flag:
    """VPT: every prompt token gets a non-zero gradient of the attack's loss in eval mode, so PGD's input gradient
    is taken through the prompted forward (the adaptive attack). `not run` for a model without prompts."""
    prompts = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "prompt"]
    if not prompts:
        return Flag("prompt_path", "not run", "no prompt tokens in the model (not VPT)")
    with attack_mode(model), torch.enable_grad():
        for p in prompts:
            p.requires_grad_(True)
        try:
            xr = x.detach().clone().requires_grad_(True)
            grads = torch.autograd.grad(F.cross_entropy(model(xr), y), [xr, *prompts], allow_unused=True)
        finally:
            for p in prompts:
                p.requires_grad_(False)
    dead = sum(g is None or not bool(g.abs().sum() > 0) for g in grads[1:])
    return _flag("prompt_path", dead > 0 or grads[0] is None,
                 f"the attack loss reaches all {len(prompts)} prompts: PGD differentiates through the prompted "
                 "forward (prompts are parameters of the attacked model), an adaptive white-box attack",
                 f"{dead} of {len(prompts)} prompts get no gradient of the attack loss: the attack does not see "
                 "the prompt path (detached or dropped prompts), so it is not adaptive", None,
                 prompts=len(prompts), without_gradient=dead)


def integrity(accs: Mapping[str, float], sweep: Sequence[Mapping] | None, n: int | None,
              model: nn.Module | None = None, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Flag]:
    """All four flags from a suite's accuracies (`pgd`, `pgd100`, `autoattack` in %), its sweep and image count,
    and (for `prompt_path`) the model and one batch."""
    flags = [pgd_steps_gap(accs.get("pgd"), accs.get("pgd100")), sweep_flag(sweep, n),
             aa_gap(accs.get("pgd"), accs.get("autoattack"))]
    if model is not None and batch is not None:
        flags.append(prompt_flag(model, *batch))
    return flags
