"""Integrity flags (gradient-masking signals): a deliberately masked model and a too-weak PGD are flagged with their
numbers; the adversarially trained MLP passes every flag; VPT's prompts are on the attack's gradient path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from roli.attacks import build_attack
from roli.attacks.autoattack import AutoAttackConfig
from roli.attacks.pgd import PGDConfig
from roli.config import ThreatConfig, attack_config
from roli.evaluation.accuracy import accuracy
from roli.evaluation.integrity import AA_GAP, NEAR_ZERO, PGD_STEPS_GAP, aa_gap, pgd_steps_gap, prompt_flag, sweep_flag
from roli.evaluation.suite import SUITES, run_suite

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1


class Saturated(nn.Module):
    """Logits x 1e4: the softmax saturates, so cross-entropy input gradients are exactly 0 at every confidently
    classified point (gradient masking); the decision, and so the true robustness, is the inner model's."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1e4


def full_suite(model: nn.Module, loader, pgd_step: float = EPS / 4) -> dict:
    configs = {"clean": None, "fgsm": attack_config("fgsm"), "pgd": PGDConfig(step_size=pgd_step, steps=10),
               "pgd100": PGDConfig(step_size=pgd_step, steps=100, restarts=5),
               "autoattack": AutoAttackConfig(version="custom", attacks=("apgd-ce", "apgd-t"), n_iter=20, seed=0)}
    return run_suite(model, loader, SUITES["full"], configs, ThreatConfig(eps=EPS))


def by_name(out: dict) -> dict[str, dict]:
    return {f["name"]: f for f in out["integrity"]}


def test_the_adversarially_trained_mlp_passes_every_flag(robust_mlp):
    model, loader, *_ = robust_mlp
    out = full_suite(model, loader)
    flags = by_name(out)
    assert [f["name"] for f in out["integrity"]] == ["pgd_steps", "eps_sweep", "pgd_autoattack", "prompt_path"]
    assert {k: f["verdict"] for k, f in flags.items()} == {"pgd_steps": "pass", "eps_sweep": "pass",
                                                           "pgd_autoattack": "pass", "prompt_path": "not run"}
    steps = flags["pgd_steps"]["numbers"]
    assert steps["pgd10"] == out["results"]["pgd"]["acc"] == 60.0 and steps["pgd100"] == out["probes"]["pgd100"]["acc"]
    assert 0 <= steps["gap"] <= PGD_STEPS_GAP and flags["pgd_steps"]["threshold"] == PGD_STEPS_GAP
    assert flags["eps_sweep"]["numbers"]["large_acc"] <= NEAR_ZERO and not flags["eps_sweep"]["numbers"]["rises"]
    assert 0 <= flags["pgd_autoattack"]["numbers"]["gap"] <= AA_GAP
    assert list(out["results"]) == ["clean", "fgsm", "pgd", "autoattack"]  # the probe is not a reported result
    assert out["attacks"]["pgd100"]["steps"] == 100 and out["attacks"]["pgd100"]["restarts"] == 5
    json.dumps(out)


def test_a_gradient_masked_model_is_flagged(robust_mlp, caplog):
    """Saturated logits: PGD (cross-entropy) cannot move, so PGD = clean accuracy, accuracy does not fall with eps,
    and AutoAttack's scale-invariant targeted DLR loss finds what PGD misses."""
    model, loader, *_ = robust_mlp
    with caplog.at_level("WARNING", logger="roli"):
        out = full_suite(Saturated(model), loader)
    flags = by_name(out)
    res = {k: v["acc"] for k, v in out["results"].items()}
    assert res["pgd"] == res["clean"]  # masked: PGD-10 finds nothing
    gap = flags["pgd_autoattack"]
    assert gap["verdict"] == "flag" and gap["numbers"]["gap"] == res["pgd"] - res["autoattack"] >= 10
    assert f"gap {gap['numbers']['gap']:.2f} > {AA_GAP:g} points" in gap["message"]
    sweep = flags["eps_sweep"]
    assert sweep["verdict"] == "flag" and sweep["numbers"]["large_eps"] == 0.5
    assert sweep["numbers"]["large_acc"] >= 50 and f"still {sweep['numbers']['large_acc']:.2f}%" in sweep["message"]
    assert "integrity pgd_autoattack flagged" in caplog.text and "integrity eps_sweep flagged" in caplog.text


def test_a_too_weak_pgd_is_flagged_against_pgd100_with_restarts(robust_mlp):
    """PGD-10 with a step of eps/40 can move only eps/4 from its start: PGD-100 x 5 with the same step finds more."""
    model, loader, *_ = robust_mlp
    threat, step = ThreatConfig(eps=EPS), EPS / 40
    torch.manual_seed(0)
    pgd10 = accuracy(model, loader, build_attack(PGDConfig(step_size=step, steps=10, random_start=False), threat))
    torch.manual_seed(0)
    pgd100 = accuracy(model, loader, build_attack(PGDConfig(step_size=step, steps=100, restarts=5), threat))
    flag = pgd_steps_gap(pgd10["acc"], pgd100["acc"])
    assert flag.verdict == "flag" and flag.numbers["gap"] == pgd10["acc"] - pgd100["acc"] > PGD_STEPS_GAP
    assert "10 steps are too weak" in flag.message and f"PGD-10 {pgd10['acc']:.2f}%" in flag.message


def test_sweep_flag_allows_one_image_of_noise_and_not_more():
    pts = [{"eps": 0.0, "acc": 80.0}, {"eps": 0.1, "acc": 50.0}, {"eps": 0.2, "acc": 51.0},
           {"eps": 0.5, "acc": 0.0, "large": True}]
    assert sweep_flag(pts, n=100).verdict == "pass"  # +1 point = one image of 100
    rise = sweep_flag(pts, n=200)  # +1 point = two images of 200
    assert rise.verdict == "flag" and rise.numbers["rises"] == ["eps 0.1: 50.00% -> 0.2: 51.00%"]
    assert rise.numbers["one_image"] == 0.5 and "accuracy rises with eps" in rise.message
    assert sweep_flag(None, n=100).verdict == "not run"


def test_missing_numbers_are_not_run_never_pass():
    assert pgd_steps_gap(60.0, None).verdict == aa_gap(None, 50.0).verdict == "not run"
    assert aa_gap(60.0, 58.0).verdict == "pass" and aa_gap(60.0, 56.0).verdict == "flag"
    assert pgd_steps_gap(60.0, 58.0).verdict == "pass" and pgd_steps_gap(60.0, 57.5).numbers["gap"] == 2.5


class Detached(nn.Module):
    """A VPT model whose prompts are used as constants (detached): an attack on it would not see the prompt path."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = {m: m.prompt for m in self.inner.modules() if isinstance(getattr(m, "prompt", None), nn.Parameter)}
        for m, p in saved.items():
            del m.prompt
            m.prompt = p.detach()
        try:
            return self.inner(x)
        finally:
            for m, p in saved.items():
                m.prompt = p


def test_vpt_prompts_are_on_the_attack_gradient_path():
    from roli.transfer import build_transfer
    from roli.transfer.prompt import PromptConfig
    from tiny_models import tiny_backbone

    model = build_transfer(PromptConfig(num_tokens=2)).apply(tiny_backbone("vit")).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    flags = [p.requires_grad for p in model.parameters()]
    ok = prompt_flag(model, x, y)
    assert ok.verdict == "pass" and ok.numbers == {"prompts": 4, "without_gradient": 0}  # vit_tiny_28: 4 blocks
    assert [p.requires_grad for p in model.parameters()] == flags  # restored
    bad = prompt_flag(Detached(model), x, y)
    assert bad.verdict == "flag" and bad.numbers["without_gradient"] == 4 and "not adaptive" in bad.message
    assert prompt_flag(nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), x, y).verdict == "not run"
