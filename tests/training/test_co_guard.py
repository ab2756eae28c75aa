"""roli.training.co_guard: the collapse rule, the attack it escalates to, and (on a scripted collapse) the rollback
of weights and optimiser, the events in results.json and history, `stop`, and resume after a kill."""

from __future__ import annotations

import pytest
import torch

from roli.config import CoGuardConfig, ThreatConfig, attack_config, load_config
from roli.training import co_guard, trainer
from roli.training.pipeline import run
from training.test_trainer import _numbers, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
GUARD = CoGuardConfig()


def test_the_collapse_rule_needs_both_the_ratio_and_the_gap():
    assert co_guard.collapsed(2.0, 80.0, GUARD)  # the collapse signature
    assert not co_guard.collapsed(48.0, 55.0, GUARD)  # a healthy robust model
    assert not co_guard.collapsed(12.0, 30.0, GUARD)  # ratio 0.4 but a gap of 18 points: a weak early model
    assert not co_guard.collapsed(45.0, 85.0, GUARD)  # a gap of 40 points but ratio 0.53
    assert co_guard.collapsed(10.0, 30.0, GUARD)  # ratio 0.33, gap 20


def test_auto_is_on_for_one_step_attacks_only():
    on = {n: co_guard.enabled(GUARD, attack_config(n), True) for n in ("fgsm", "fgsm_rs", "nfgsm", "pgd")}
    assert on == {"fgsm": True, "fgsm_rs": True, "nfgsm": True, "pgd": False}
    assert co_guard.enabled(GUARD, attack_config("pgd", steps=1), True)
    assert not co_guard.enabled(GUARD, attack_config("fgsm"), False)  # standard training
    assert co_guard.enabled(CoGuardConfig(enabled=True), attack_config("pgd"), True)
    assert not co_guard.enabled(CoGuardConfig(enabled=False), attack_config("nfgsm"), True)


def test_stronger_attacks():
    threat = ThreatConfig(eps=0.1)
    pgd2 = co_guard.stronger(attack_config("fgsm_rs"), threat)
    assert (pgd2.name, pgd2.steps, pgd2.step_size, pgd2.random_start, pgd2.select) == ("pgd", 2, 0.05, True, "last")
    pgd4 = co_guard.stronger(pgd2, threat)
    assert (pgd4.steps, pgd4.step_size) == (4, 0.05)
    assert co_guard.stronger(attack_config("nfgsm", loss="kl"), threat).loss == "kl"  # TRADES keeps its loss


def _scripted(monkeypatch, collapse_epochs: set[int]):
    """Validation scripted per (epoch, attack): a one-step training attack in `collapse_epochs` (0-based) collapses;
    records each train_one_epoch call's attack and the model and optimiser state it started from."""
    calls = []
    real_epoch = trainer.train_one_epoch

    def recording(model, loader, optimizer, scheduler, attack, train_cfg, epoch, **kwargs):
        calls.append({"epoch": epoch, "attack": attack.config.name, "model": {k: v.clone() for k, v in
                      model.state_dict().items()}, "opt": optimizer.state_dict()["state"].get(0, {}).get("exp_avg")})
        calls[-1]["opt"] = None if calls[-1]["opt"] is None else calls[-1]["opt"].clone()
        return real_epoch(model, loader, optimizer, scheduler, attack, train_cfg, epoch, **kwargs)

    def scripted(model, loader, attacks, **kwargs):
        assert set(attacks) == {"clean", "pgd", "fgsm"}  # the guard adds FGSM to validation
        bad = calls[-1]["epoch"] in collapse_epochs and calls[-1]["attack"] == "fgsm_rs"
        pgd, fgsm = (3.0, 80.0) if bad else (30.0 + calls[-1]["epoch"], 40.0)
        return {"clean": {"acc": 70.0, "n": 32, "seconds": 0.0}, "pgd": {"acc": pgd, "n": 32, "seconds": 0.0},
                "fgsm": {"acc": fgsm, "n": 32, "seconds": 0.0}}

    monkeypatch.setattr(trainer, "train_one_epoch", recording)
    monkeypatch.setattr(trainer, "evaluate", scripted)
    return calls


def test_a_collapse_rolls_back_and_trains_on_with_pgd2(fast_cfg, tmp_path, monkeypatch):
    calls = _scripted(monkeypatch, {1})
    res = run(fast_cfg(["train.epochs=3", "attack={name: fgsm_rs}"]), out=tmp_path, name="g")
    assert [(c["epoch"], c["attack"]) for c in calls] == [(0, "fgsm_rs"), (1, "fgsm_rs"), (1, "pgd"), (2, "pgd")]
    for k, v in calls[1]["model"].items():  # epoch 2 again from epoch 1's weights and optimiser state
        assert torch.equal(calls[2]["model"][k], v), k
    assert torch.equal(calls[2]["opt"], calls[1]["opt"]) and not torch.equal(calls[3]["opt"], calls[1]["opt"])
    guard = res["co_guard"]
    assert [e["epoch"] for e in guard["events"]] == [2] and guard["events"][0]["action"] == "stronger"
    assert guard["events"][0]["val_robust"] == 3.0 and guard["events"][0]["val_fgsm"] == 80.0
    assert guard["final_attack"]["name"] == "pgd" and guard["final_attack"]["steps"] == 2 and not guard["stopped"]
    hist = res["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3] and [r["val_robust"] for r in hist] == [30.0, 31.0, 32.0]
    assert "collapse in epoch 2" in hist[1]["co_guard"] and "co_guard" not in hist[2]
    assert hist[1]["attack_steps"] == 2 and "attack_steps" not in hist[0]  # fgsm_rs has no steps field


def test_on_collapse_stop_ends_training_at_the_last_good_epoch(fast_cfg, tmp_path, monkeypatch):
    _scripted(monkeypatch, {1})
    res = run(fast_cfg(["train.epochs=3", "attack={name: fgsm_rs}", "train.co_guard.on_collapse=stop"]),
              out=tmp_path, name="g")
    assert [r["epoch"] for r in res["history"]] == [1] and res["selected_epoch"] == 1
    assert res["co_guard"]["stopped"] and res["co_guard"]["events"][0]["action"] == "stop"
    assert res["status"] == "complete"


def test_max_rollbacks_then_stop(fast_cfg, tmp_path, monkeypatch):
    _scripted(monkeypatch, {0})
    with pytest.raises(trainer.TrainingFailed, match="no good epoch"):
        run(fast_cfg(["attack={name: fgsm_rs}", "train.co_guard.max_rollbacks=0"]), out=tmp_path, name="g")


def test_resume_after_a_kill_right_after_the_rollback_goes_on_as_the_uninterrupted_run(fast_cfg, tmp_path,
                                                                                       monkeypatch):
    cfg = fast_cfg(["train.epochs=3", "attack={name: fgsm_rs}", "run.keep_resume_state=true"])
    with monkeypatch.context() as m:
        _scripted(m, {1})
        full = run(cfg, out=tmp_path / "a", name="g")
    calls = _scripted(monkeypatch, {1})
    real = trainer.train_one_epoch

    def killed_in_the_redo(*args, **kwargs):
        if len(calls) == 2:  # the redo of epoch 2 (after the rollback): killed before it trains
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", killed_in_the_redo)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out=tmp_path / "b", name="g")
    state = read_checkpoint(tmp_path / "b" / "g" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["co_guard"]["attack"]["name"] == "pgd"  # the decision survives the kill
    calls.clear()
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    calls = _scripted(monkeypatch, {1})
    resumed = run(cfg, resume=tmp_path / "b" / "g")
    assert [(c["epoch"], c["attack"]) for c in calls] == [(1, "pgd"), (2, "pgd")]
    assert _numbers(full["history"]) == _numbers(resumed["history"])
    assert full["co_guard"] == resumed["co_guard"]
    a, b = (read_checkpoint(tmp_path / p / "g" / "checkpoint.pt")["model"] for p in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epochs_below_the_target_eps_are_not_judged(fast_cfg, tmp_path, monkeypatch):
    _scripted(monkeypatch, {0, 1, 2})  # the collapse signature in every fgsm_rs epoch
    res = run(fast_cfg(["train.epochs=3", "attack={name: fgsm_rs}",
                        "train.attack_schedule.eps={name: linear, start: 0.5, epochs: 2}"]), out=tmp_path, name="g")
    assert [e["epoch"] for e in res["co_guard"]["events"]] == [3]  # epochs 1-2 warm eps up: not judged


def test_the_guard_config_is_strict():
    with pytest.raises(Exception, match="ratio must be in"):
        load_config(data={"train": {"co_guard": {"ratio": 0}}})
