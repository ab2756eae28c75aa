"""roli.training.schedules: each schedule's value at chosen epochs, the epoch's attack settings, the history rows,
and an eps of 0 running no attack pass at all."""

from __future__ import annotations

import pytest
import torch

from roli.config import (
    AttackScheduleConfig,
    ConfigError,
    ScheduleConfig,
    ThreatConfig,
    attack_config,
    from_dict,
    load_config,
)
from roli.training import trainer
from roli.training.pipeline import run
from roli.training.schedules import scheduled

pytestmark = pytest.mark.usefixtures("one_thread")


def sched(**data) -> ScheduleConfig:
    return from_dict(ScheduleConfig, data, "s")


@pytest.mark.parametrize("data, values", [
    ({"name": "constant"}, [1, 1, 1, 1]),
    ({"name": "linear", "epochs": 4}, [0, 0.25, 0.5, 0.75, 1, 1]),
    ({"name": "linear", "start": 0.5, "epochs": 2}, [0.5, 0.75, 1, 1]),
    ({"name": "step_ramp", "epochs": 5}, [0.2, 0.4, 0.6, 0.8, 1, 1]),
    ({"name": "two_hinge", "points": [[1, 0.0], [3, 1.5], [5, 1.0]]}, [0, 0, 0.75, 1.5, 1.25, 1, 1]),
])
def test_schedule_values(data, values):
    s = sched(**data)
    assert [s.at(e) for e in range(len(values))] == pytest.approx(values)


def test_schedule_configs_are_strict():
    with pytest.raises(ConfigError, match="unknown key"):
        sched(name="linear", points=[[0, 0], [1, 1], [2, 1]])
    with pytest.raises(ConfigError, match="increasing epochs"):
        sched(name="two_hinge", points=[[0, 0], [0, 1], [2, 1]])
    with pytest.raises(ConfigError, match="unknown attack schedule 'cosine'"):
        sched(name="cosine")
    with pytest.raises(ConfigError, match="attack 'fgsm_rs' has no step_size"):
        load_config(data={"attack": {"name": "fgsm_rs"},
                          "train": {"attack_schedule": {"step_size": {"name": "step_ramp"}}}})


def test_the_epoch_attack_follows_the_schedules():
    pgd, threat = attack_config("pgd", steps=8, step_size=0.02), ThreatConfig(eps=0.1)
    s = from_dict(AttackScheduleConfig, {"eps": {"name": "linear", "epochs": 4}, "step_size": {"name": "step_ramp",
                  "epochs": 2}, "steps": {"name": "linear", "start": 0.25, "epochs": 2}}, "s")
    ep = scheduled(pgd, threat, s, 2)  # eps x 0.5; step x 0.5 (eps) x 1 (ramp done); steps x 1
    assert ep.threat.eps == pytest.approx(0.05) and ep.attack.step_size == pytest.approx(0.01) and ep.attack.steps == 8
    ep = scheduled(pgd, threat, s, 1)  # eps x 0.25, step x 0.25 x 1, steps x 0.625 -> 5
    assert ep.row() == pytest.approx({"attack_eps": 0.025, "attack_step_size": 0.005, "attack_steps": 5})
    assert scheduled(pgd, threat, s, 0).threat.eps == 0  # a clean epoch
    same = scheduled(pgd, threat, AttackScheduleConfig(), 7)
    assert same.attack is pgd and same.threat is threat  # constant schedules change nothing
    fgsm_rs = scheduled(attack_config("fgsm_rs"), threat, s, 2)
    assert fgsm_rs.row() == {"attack_eps": pytest.approx(0.05)} and fgsm_rs.attack.step == 1.25  # a fraction of eps


def test_a_run_records_the_schedule_and_skips_the_attack_at_eps_zero(fast_cfg, tmp_path, monkeypatch):
    """eps from 0 over 2 epochs: epoch 1 is clean (one forward per batch, no attack pass), then eps 0.05 and 0.1;
    validation and test attack at the target eps 0.1."""
    forwards, attacks = [], []
    real_epoch = trainer.train_one_epoch

    def counting(model, loader, optimizer, scheduler, attack, *args, **kwargs):
        calls = []
        handle = model.register_forward_hook(lambda *a: calls.append(1))
        try:
            return real_epoch(model, loader, optimizer, scheduler, attack, *args, **kwargs)
        finally:
            handle.remove()
            forwards.append(len(calls))
            attacks.append(None if attack is None else attack.threat.eps)

    monkeypatch.setattr(trainer, "train_one_epoch", counting)
    cfg = fast_cfg(["train.epochs=3", "train.attack_schedule.eps.name=linear", "train.attack_schedule.eps.epochs=2"])
    res = run(cfg, out=tmp_path, name="s")
    assert [r["attack_eps"] for r in res["history"]] == pytest.approx([0.0, 0.05, 0.1])
    assert [r["attack_step_size"] for r in res["history"]] == pytest.approx([0.0, 0.025, 0.05])
    assert [r["attack_steps"] for r in res["history"]] == [0, 2, 2]  # no attack pass at eps 0
    assert attacks == [None, pytest.approx(0.05), pytest.approx(0.1)]
    batches = 2  # 64 training images, batch 32
    # PGD-2 with select: best: 2 step forwards + 1 for the last iterate's verdict, + the training step
    assert forwards == [batches, batches * 4, batches * 4]
    assert res["test"]["threat"]["eps"] == 0.1 and res["config"]["threat"]["eps"] == 0.1


def test_an_eps_zero_epoch_is_plain_clean_training(fast_cfg, tmp_path):
    """Every epoch at eps 0 trains exactly like train.adversarial: false (the same weights, bit for bit)."""
    zero = fast_cfg(["train.epochs=1", "train.attack_schedule.eps.name=linear", "train.attack_schedule.eps.epochs=5"])
    clean = fast_cfg(["train.epochs=1", "train.adversarial=false"])
    a, b = run(zero, out=tmp_path, name="zero"), run(clean, out=tmp_path, name="clean")
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    wa = torch.load(tmp_path / "zero" / "best.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "clean" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
