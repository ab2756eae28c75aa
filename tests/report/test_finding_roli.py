"""Finding 3 per method (Holm, TOST) and against a compute-matched control, on fixed records (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from roli.report.finding_roli import finding_roli
from roli.report.inference import holm

SPEC = {"robust": "robust", "standard": "standard", "methods": ["linear_probe", "full_finetune", "lora", "adapter"], "alpha": 0.05,
        "equivalence_margin": 1.0, "controls": ["ranli", "ranli_matched"], "paper": {"roli_gain_clean": 3.88}}
BASE = {"full_finetune": 75.0, "lora": 80.0, "adapter": 77.0}
# RoLI - RanLI per seed: full finetuning gains a lot, LoRA ~0 (tight), adapter ~0 (noisy)
GAIN = {"full_finetune": [4.1, 4.6, 3.9, 4.4], "lora": [0.1, -0.2, 0.15, 0.05], "adapter": [2.5, -2.8, 1.9, -1.7]}
# RoLI - RanLI(compute-matched) per seed: the matched control closes full finetuning's gap
MATCHED = {"full_finetune": [0.2, -0.3, 0.1, 0.3], "lora": [0.0, 0.1, -0.1, 0.1], "adapter": [0.1, 0.2, -0.2, 0.0]}


def _recs(values, pgd_shift=-8.0):
    return [{"seed": s, "clean": v, "pgd": v + pgd_shift, "aa": None} for s, v in enumerate(values)]


@pytest.fixture
def groups():
    g = {}
    for m, base in BASE.items():
        ranli = base + np.array([0.3, -0.1, 0.2, 0.0])
        g[f"robust-{m}-ranli"] = _recs(ranli)
        g[f"robust-{m}-roli"] = _recs(ranli + np.array(GAIN[m]))
        g[f"robust-{m}-ranli_matched"] = _recs(ranli + np.array(GAIN[m]) - np.array(MATCHED[m]))  # roli - MATCHED
    return g


def test_per_method_holm_tost_verdicts(groups):
    out = finding_roli(groups, SPEC)
    ranli, matched = out["controls"]
    rows = {r["method"]: r for r in ranli["methods"]}
    raw = {m: stats.ttest_1samp(GAIN[m], 0).pvalue for m in GAIN}
    adjusted = holm(raw)
    for m in GAIN:
        s = rows[m]["metrics"]["clean"]
        assert s["p"] == pytest.approx(raw[m]) and s["holm_p"] == pytest.approx(adjusted[m])
    assert rows["full_finetune"]["metrics"]["clean"]["verdict"] == "RoLI better"
    assert rows["lora"]["metrics"]["clean"]["verdict"] == "equivalent"  # tight around 0: TOST +-1 passes
    assert rows["adapter"]["metrics"]["clean"]["verdict"] == "inconclusive"  # noisy: neither
    assert ranli["status"] == "partly holds" and ranli["better"] == ["full_finetune"]
    assert out["status"] == "partly holds"
    # against the compute-matched control full finetuning's gain is gone
    mrows = {r["method"]: r for r in matched["methods"]}
    assert mrows["full_finetune"]["metrics"]["clean"]["verdict"] == "equivalent"
    assert matched["status"] == "does not hold"
    assert "Against RanLI (compute-matched): does not hold" in out["sentence"]


def test_pooled_two_way_with_carrier_and_paper(groups):
    ranli = finding_roli(groups, SPEC)["controls"][0]
    pooled = ranli["pooled"]["clean"]
    d = np.array([GAIN[m] for m in ("full_finetune", "lora", "adapter")])
    assert pooled["mean"] == pytest.approx(d.mean()) and pooled["df"] == (3 - 1) * (4 - 1)
    assert pooled["seed_cluster"]["p"] == pytest.approx(stats.ttest_1samp(d.mean(0), 0).pvalue)
    assert set(pooled["without"]) == {"full_finetune", "lora", "adapter"}
    assert pooled["p"] < 0.05 and pooled["without"]["full_finetune"]["p"] >= 0.05
    assert pooled["carried_by"] == ["full_finetune"]  # not lora: dropping it costs df, but it carries nothing
    t = (pooled["mean"] - 3.88) / pooled["se"]
    assert pooled["p_vs_paper"] == pytest.approx(2 * stats.t.sf(abs(t), pooled["df"]))


def test_missing_control_and_one_seed_are_not_run_or_untested(groups):
    g = {k: v for k, v in groups.items() if not k.endswith("ranli_matched")}
    g["robust-lora-roli"] = g["robust-lora-roli"][:1]
    out = finding_roli(g, SPEC)
    ranli, matched = out["controls"]
    assert matched["status"] == "not run" and "not run" in out["sentence"]
    lora = next(r for r in ranli["methods"] if r["method"] == "lora")
    assert lora["metrics"]["clean"]["verdict"] == "untested"
