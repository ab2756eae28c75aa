"""AutoAttack through pyautoattack: config, per-point worst case, strength ordering, and resumable evaluation.

Standard AutoAttack is expensive; these tests use custom versions (APGD-CE + APGD-T, few iterations) on 100 points.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import roli.evaluation.autoattack as aa_eval
from roli.attacks import ATTACKS, build_attack, make_attack
from roli.attacks.autoattack import AutoAttack, AutoAttackConfig
from roli.attacks.base import attack_mode
from roli.config import AttackConfig, ConfigError, ThreatConfig, from_dict
from roli.evaluation.accuracy import accuracy
from roli.evaluation.autoattack import StateMismatch, evaluate_autoattack

pyautoattack = pytest.importorskip("pyautoattack", reason="pyautoattack is a roli dependency: pip install -e .")
pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1  # the robust model's training eps
CHEAP = {"version": "custom", "attacks": ("apgd-ce", "apgd-t"), "n_iter": 20, "apgd_restarts": 1, "seed": 0}


def cheap(eps: float = EPS, norm: str = "linf", **kw) -> tuple[AutoAttackConfig, ThreatConfig]:
    """A cheap AutoAttack config and its threat model (pass both: `build_attack(*cheap())`)."""
    return AutoAttackConfig(**{**CHEAP, **kw}), ThreatConfig(norm=norm, eps=eps)


def loader_of(x: torch.Tensor, y: torch.Tensor, batch: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


# --------------------------------------------------------------------------- configuration


def test_registered_with_its_config():
    assert ATTACKS.get("autoattack") is AutoAttack and AutoAttack.config_cls is AutoAttackConfig
    cfg = from_dict(AttackConfig, {"name": "autoattack", "version": "custom", "attacks": ["apgd-ce", "apgd-t"]},
                    "attack")
    assert isinstance(cfg, AutoAttackConfig) and cfg.attacks == ("apgd-ce", "apgd-t")
    assert not AutoAttackConfig.trainable


@pytest.mark.parametrize("data, match", [
    ({"eps": 0.1}, r"unknown key\(s\) \['eps'\]"),  # eps is the run's threat model only (protocol B6)
    ({"steps": 50}, r"unknown key\(s\) \['steps'\]"),  # PGD's fields are not AutoAttack's
    ({"version": "custom"}, "give `attacks`"),
    ({"attacks": ["apgd-ce"]}, "give `attacks`"),  # standard ignores a list: refuse it
    ({"version": "custom", "attacks": ["apgd"]}, "unknown AutoAttack sub-attack"),
    ({"version": "custom", "attacks": ["apgd-ce", "apgd-ce"]}, "twice"),
    ({"n_iter": 0}, "n_iter must be >= 1"),
    ({"version": "fast"}, "choose one of"),
])
def test_bad_configs_name_the_fix(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(AttackConfig, {"name": "autoattack", **data}, "attack")


@pytest.mark.parametrize("version, expected", [
    ("standard", ["apgd-ce", "apgd-t", "fab-t", "square"]),
    ("plus", ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]),
    ("rand", ["apgd-ce", "apgd-dlr"]),
])
def test_versions_follow_the_package(version, expected):
    assert AutoAttack(AutoAttackConfig(version=version), ThreatConfig(eps=EPS)).sub_attacks() == expected


def test_overrides_reach_the_package_objects():
    from pyautoattack.autopgd_base import APGDAttack

    atk = AutoAttack(AutoAttackConfig(n_iter=20, apgd_restarts=2, square_queries=50), ThreatConfig(norm="l2", eps=0.2))
    aa = atk.build(nn.Identity(), n_classes=4, seed=5, device=torch.device("cpu"))
    fresh = APGDAttack(nn.Identity(), n_iter=20, eps=0.2)
    for apgd in (aa.apgd, aa.apgd_targeted):  # APGD's step-size checkpoints follow n_iter
        assert (apgd.n_iter, apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr) == \
               (20, fresh.n_iter_2, fresh.n_iter_min, fresh.size_decr)
    assert (aa.fab.n_iter, aa.apgd.n_restarts, aa.square.n_queries) == (20, 2, 50)
    assert aa.apgd_targeted.n_target_classes == aa.fab.n_target_classes == 3  # min(9, classes - 1)
    assert (aa.norm, aa.epsilon, aa.seed) == ("L2", 0.2, 5)
    settings = atk.settings(n_classes=4, seed=5)
    assert settings["eps"] == 0.2 and settings["n_target_classes"] == 3 and "pyautoattack 0.2" in settings["library"]
    with pytest.raises(ConfigError, match=r"only 4 classes \(3 possible targets\): set n_target_classes <= 3"):
        AutoAttack(AutoAttackConfig(n_target_classes=9), ThreatConfig(eps=0.2)).plan(4)


@pytest.mark.parametrize("version, classes, runs, substituted", [
    ("standard", 10, ["apgd-ce", "apgd-t", "fab-t", "square"], []),  # the standard list, unchanged
    ("standard", 4, ["apgd-ce", "apgd-t", "fab-t", "square"], []),
    ("standard", 3, ["apgd-ce", "apgd-dlr", "fab-t", "square"], [("apgd-t", "apgd-dlr")]),
    ("standard", 2, ["apgd-ce", "fab-t", "square"], [("apgd-t", None)]),
    ("plus", 3, ["apgd-ce", "apgd-dlr", "fab", "square", "fab-t"], [("apgd-t", None)]),  # APGD-DLR runs already
    ("plus", 2, ["apgd-ce", "fab", "square", "fab-t"], [("apgd-dlr", None), ("apgd-t", None)]),
])
def test_sub_attacks_fit_the_class_count(version, classes, runs, substituted):
    atk = AutoAttack(AutoAttackConfig(version=version), ThreatConfig(eps=EPS))
    attacks, subs = atk.plan(classes)
    assert attacks == runs and [(s["attack"], s["by"]) for s in subs] == substituted
    assert all(s["why"] and s["classes"] == classes for s in subs)
    settings = atk.settings(classes, seed=0)
    assert settings["attacks"] == runs and settings["substitutions"] == subs
    assert settings["n_target_classes"] == min(9, classes - 1)


@pytest.mark.parametrize("classes", [2, 3])
def test_standard_autoattack_completes_on_few_classes(classes):
    """A 2- and a 3-class model through standard AutoAttack (tiny budget): it completes, records the substitution,
    and its adversarial examples are re-checked in the eps ball and misclassified (`_verify`)."""
    torch.manual_seed(classes)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, classes)).eval()
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct, so every break is the attack's
    cfg, threat = cheap(eps=0.3, version="standard", attacks=(), n_iter=5, square_queries=20)
    res = evaluate_autoattack(model, loader_of(x, y, 6), cfg, threat)
    want = ["clean", "apgd-ce", *(["apgd-dlr"] if classes == 3 else []), "fab-t", "square"]
    assert list(res["after"]) == want and res["after"]["clean"] == 100.0
    assert [s["attack"] for s in res["settings"]["substitutions"]] == ["apgd-t"]
    assert res["acc"] <= 50.0  # eps 0.3 on a linear model: it really breaks points
    x_adv = build_attack(cfg, threat)(model, x, y)  # the Attack API runs the same substituted list
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).sum() >= 6


# --------------------------------------------------------------------------- the attack API


def test_attack_contract(robust_mlp):
    """x_adv in the box and the ball; eval mode and requires_grad restored; the caller's RNG and tracer kept."""
    model, _, x, y = robust_mlp
    x, y = x[1::3], y[1::3]  # 34 points of all classes
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    tracer = sys.gettrace()
    torch.manual_seed(1)
    expected_next = (torch.randint(0, 2**31 - 1, ()), torch.rand(3))[1]  # the seed draw, then the next draw
    torch.manual_seed(1)
    x_adv = build_attack(*cheap(seed=None))(model, x, y)
    assert torch.equal(torch.rand(3), expected_next)  # pyautoattack's re-seeding does not leak
    assert sys.gettrace() is tracer  # nor its sys.settrace(None)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    model.eval()
    d = (x_adv - x).flatten(1).abs().amax(1)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and d.max() <= EPS + 1e-6
    with torch.no_grad():
        broken = (model(x_adv).argmax(1) != y) & (model(x).argmax(1) == y)
    assert broken.sum() >= 3 and (d[broken] > 0).all()


def test_seeded_determinism_and_eps_zero(robust_mlp):
    model, _, x, y = robust_mlp
    x, y = x[1::3], y[1::3]
    atk = build_attack(*cheap(eps=0.2, seed=None, attacks=("apgd-ce",)))
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(atk(model, x, y))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert torch.equal(build_attack(*cheap(eps=0.0))(model, x, y), x)


def test_fewer_classes_use_fewer_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    x_adv = build_attack(*cheap(eps=0.3, attacks=("apgd-t", "fab-t"), n_iter=5))(model, x, y)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6


# --------------------------------------------------------------------------- evaluation over a loader


def test_ordering_autoattack_pgd_fgsm_clean(robust_mlp):
    model, loader, *_ = robust_mlp
    torch.manual_seed(0)
    clean = accuracy(model, loader)["acc"]
    fgsm = accuracy(model, loader, make_attack(name="fgsm", eps=EPS))["acc"]
    pgd = accuracy(model, loader, make_attack(eps=EPS, step_size=EPS / 4, steps=10))["acc"]
    res = evaluate_autoattack(model, loader, *cheap())
    aa = res["acc"]
    assert clean >= 70  # the model learned
    assert aa <= pgd <= fgsm <= clean
    assert clean - aa >= 10
    after = res["after"]
    assert list(after) == ["clean", "apgd-ce", "apgd-t"] and after["clean"] == clean
    assert after["clean"] >= after["apgd-ce"] >= after["apgd-t"] == aa  # the per-point worst case only falls
    assert res["n"] == 100 and res["settings"]["eps"] == EPS and res["images_per_s"] > 0


def test_equals_one_pyautoattack_call_per_chunk(robust_mlp):
    """Running the sub-attacks one at a time (for per-attack numbers and resume) changes nothing: the per-point
    result equals the package's own run_standard_evaluation on each chunk."""
    model, _, x, y = robust_mlp
    ours = evaluate_autoattack(model, loader_of(x, y, 50), *cheap())["robust"]
    direct = []
    for xc, yc in ((x[:50], y[:50]), (x[50:], y[50:])):
        aa = AutoAttack(*cheap()).build(model, 10, seed=0, device=torch.device("cpu"))
        with attack_mode(model):
            _, y_adv = aa.run_standard_evaluation(xc, yc, batch_size=250)
        direct += (y_adv == yc).tolist()
    assert ours == direct
    assert 10 <= sum(ours) <= 90


def test_resume_after_an_interruption_gives_the_identical_result(robust_mlp, tmp_path, monkeypatch):
    model, _, x, y = robust_mlp
    loader = loader_of(x, y, 25)  # 4 chunks
    real, calls = aa_eval._attack_chunk, []

    def dies_in_the_second_chunk(attack, model, xc, yc, sub, *args):
        calls.append((torch.equal(xc, x[:25]), sub))
        if not torch.equal(xc, x[:25]):
            raise KeyboardInterrupt("killed")
        return real(attack, model, xc, yc, sub, *args)

    state = tmp_path / "aa.json"
    monkeypatch.setattr(aa_eval, "_attack_chunk", dies_in_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        evaluate_autoattack(model, loader, *cheap(seed=None), state_path=state)
    saved = json.loads(state.read_text())
    assert len(saved["chunks"]) == 2 and set(saved["chunks"][0]["flags"]) == {"clean", "apgd-ce", "apgd-t"}
    assert set(saved["chunks"][1]["flags"]) == {"clean"}  # killed in its first sub-attack
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary file

    calls.clear()
    monkeypatch.setattr(aa_eval, "_attack_chunk", lambda *a: (calls.append(a[4]), real(*a))[1])
    torch.manual_seed(12345)  # another global seed: the drawn AutoAttack seed comes from the state file
    resumed = evaluate_autoattack(model, loader, *cheap(seed=None), state_path=state)
    assert len(calls) == 6  # chunks 2-4 only, two sub-attacks each
    assert resumed["resumed"] and resumed["settings"]["seed"] == saved["seed"]

    torch.manual_seed(12345)  # an uninterrupted run with the same drawn seed
    fresh = evaluate_autoattack(model, loader, *cheap(seed=saved["seed"]))
    assert resumed["robust"] == fresh["robust"] and resumed["after"] == fresh["after"]
    assert len(resumed["robust"]) == 100

    # a finished state is a cache: the same answer again without attacking
    calls.clear()
    again = evaluate_autoattack(model, loader, *cheap(seed=None), state_path=state)
    assert calls == [] and again["robust"] == resumed["robust"]


def test_state_of_another_setting_is_refused(robust_mlp, tmp_path):
    model, _, x, y = robust_mlp
    state = tmp_path / "aa.json"
    evaluate_autoattack(model, loader_of(x[:20], y[:20], 10), *cheap(attacks=("apgd-ce",)), state_path=state)
    with pytest.raises(StateMismatch, match="another model or attack"):
        evaluate_autoattack(model, loader_of(x[:20], y[:20], 10), *cheap(eps=0.2, attacks=("apgd-ce",)),
                            state_path=state)
    with pytest.raises(StateMismatch, match="other data"):
        evaluate_autoattack(model, loader_of(x[20:40], y[20:40], 10), *cheap(attacks=("apgd-ce",)), state_path=state)


def test_eps_zero_gives_clean_accuracy(robust_mlp):
    model, loader, *_ = robust_mlp
    res = evaluate_autoattack(model, loader, *cheap(eps=0.0))
    assert res["acc"] == accuracy(model, loader)["acc"] == res["after"]["clean"]


def test_invalid_adversarial_examples_are_caught():
    """_verify re-checks every success: a misbehaving attack cannot lower the number."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.full((2, 1, 2, 2), 0.5)
    with torch.no_grad():
        y = model(x).argmax(1)
    both = torch.tensor([True, True])
    with pytest.raises(RuntimeError, match="max linf distance 0.3"):  # outside the eps = 0.1 ball
        aa_eval._verify(model, x, x + 0.3, 1 - y, cheap()[1], both)
    with pytest.raises(RuntimeError, match="2 not misclassified"):
        aa_eval._verify(model, x, x.clone(), y, cheap()[1], both)
    aa_eval._verify(model, x, x + 0.05, 1 - y, cheap()[1], both)  # valid: inside the ball and misclassified
