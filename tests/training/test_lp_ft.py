"""`transfer.init: lp_ft`: a clean linear-probe stage 1 (no attack, selected on clean validation accuracy), cached
under its own key and never mistaken for RoLI's adversarial stage 1 (or the other way round)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roli.errors import ConfigError
from roli.files import read_json
from roli.sweep.estimate import cell_estimates, estimate, stage1_group
from roli.training import trainer
from roli.training.pipeline import run, stage1_config, stage1_key

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(120)]

S1 = ["stage1.epochs=1", "stage1.lr=0.05", "train.epochs=1"]
LP_FT = [*S1, "transfer.name=full_finetune", "transfer.init=lp_ft"]
ROLI = [*S1, "transfer.name=full_finetune", "transfer.init=roli"]


@pytest.fixture(scope="module")
def runs(fast_cfg, tmp_path_factory):
    """In one --out: an lp_ft run, a RoLI run, then a second lp_ft run; every train_one_epoch call is recorded
    (the method trained and whether it was given an attack)."""
    out = tmp_path_factory.mktemp("lp_ft")
    calls: list[tuple[str, str, bool]] = []
    real = trainer.train_one_epoch

    def spy(model, loader, optimizer, scheduler, attack, *args, **kwargs):
        calls.append((order[-1], model.method, attack is not None))
        return real(model, loader, optimizer, scheduler, attack, *args, **kwargs)

    order: list[str] = []
    res = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "train_one_epoch", spy)
        for name, over in (("lp_ft", LP_FT), ("roli", ROLI), ("lp_ft_again", LP_FT)):
            order.append(name)
            res[name] = run(fast_cfg(over), out=out, name=name)
    return out, res, calls


def test_lp_ft_stage1_trains_without_the_attack_and_stage2_with_it(runs):
    _, _, calls = runs
    first = [c for c in calls if c[0] == "lp_ft"]
    assert first == [("lp_ft", "linear_probe", False), ("lp_ft", "full_finetune", True)]
    assert [c for c in calls if c[0] == "roli"] == [("roli", "linear_probe", True), ("roli", "full_finetune", True)]


def test_lp_ft_records_its_clean_stage1(runs):
    _, res, _ = runs
    r = res["lp_ft"]
    assert r["init"] == "lp_ft" and r["status"] == "complete"
    s1_dir = Path(r["stage1"]["run_dir"])
    s1 = read_json(s1_dir / "results.json")
    assert s1["config"]["train"]["adversarial"] is False and s1["config"]["eval"]["select"] == "clean"
    assert r["stage1"]["key"] == s1["stage1_key"] and r["stage1"]["val"] == s1["best_val"]
    # selected on clean accuracy: the selected epoch has the highest validation clean accuracy of stage 1
    assert s1["best_val"]["clean"] == max(row["val_clean"] for row in s1["history"])


def test_lp_ft_and_roli_never_share_a_stage1(runs, fast_cfg):
    out, res, calls = runs
    lp, roli, again = res["lp_ft"], res["roli"], res["lp_ft_again"]
    assert lp["stage1"]["key"] != roli["stage1"]["key"]
    assert lp["stage1"]["run_dir"] != roli["stage1"]["run_dir"]
    assert again["stage1"]["run_dir"] == lp["stage1"]["run_dir"]  # the cache: the clean stage 1 is reused ...
    assert [c for c in calls if c[0] == "lp_ft_again"] == [("lp_ft_again", "full_finetune", True)]  # ... untrained
    assert stage1_key(stage1_config(fast_cfg(LP_FT))) == lp["stage1"]["key"]
    assert stage1_key(stage1_config(fast_cfg(ROLI))) == roli["stage1"]["key"]
    assert len(sorted(p.name for p in out.iterdir() if p.name.startswith("stage1-"))) == 2


def test_lp_ft_stage1_config_is_the_roli_one_without_the_attack(fast_cfg):
    lp, ro = stage1_config(fast_cfg(LP_FT)), stage1_config(fast_cfg(ROLI))
    assert lp.train.adversarial is False and ro.train.adversarial is True
    assert lp.eval.select == "clean" and ro.eval.select == "robust"
    assert (lp.train.lr, lp.train.optimizer, lp.train.epochs) == (ro.train.lr, ro.train.optimizer, ro.train.epochs)
    assert lp.transfer.name == "linear_probe" and lp.transfer.init == "ranli"
    # the user's own clean linear probe with the same settings is exactly an lp_ft stage 1 (and so is reused)
    own = fast_cfg(["transfer.name=linear_probe", "train.epochs=1", "train.optimizer=sgd", "train.lr=0.05",
                    "train.weight_decay=0.0", "train.warmup_epochs=0.0", "train.adversarial=false",
                    "eval.select=clean"])
    assert stage1_key(own) == stage1_key(lp)


def test_roli_with_a_clean_stage1_points_to_lp_ft(fast_cfg):
    with pytest.raises(ConfigError, match="use transfer.init: lp_ft"):
        stage1_config(fast_cfg([*ROLI, "stage1.adversarial=false"]))


def test_sweep_estimates_group_lp_ft_cells_by_their_own_stage1(fast_cfg):
    lp, ro, ranli = fast_cfg(LP_FT), fast_cfg(ROLI), fast_cfg(["transfer.name=full_finetune"])
    assert stage1_group(lp) == stage1_key(stage1_config(lp)) != stage1_group(ro)
    assert stage1_group(ranli) is None
    cost = {"images_per_s": {"vit_tiny_28": 1000.0}}  # an assumed speed: only the ratios matter here
    alone, = cell_estimates([lp], cost)
    s1 = estimate(stage1_config(lp), cost)
    assert alone.gpu_hours == pytest.approx(estimate(lp, cost).gpu_hours + s1.gpu_hours)
    assert s1.gpu_hours < estimate(stage1_config(ro), cost).gpu_hours  # no attack in the clean stage 1's training
