"""roli.report findings: the statistics against scipy's (and by hand), the verdicts, the missing-group and AA
rules, JSON output and spec validation."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from scipy import stats

from roli.errors import ConfigError, ResultsError
from roli.report.findings import finding_backbone, finding_linear_vs_full, finding_roli, findings
from roli.report.markdown import findings_markdown, md_table
from roli.report.quirks import compare_quirks
from roli.report.sections import HEADINGS, sections, significance
from roli.report.spec import load_spec
from roli.report.stats import paired, sign_flip, welch
from roli.report.wording import pvalue

METHODS = ["linear_probe", "full_finetune", "lora", "adapter"]


def spec(**kw):
    return {"robust": "robust", "standard": "standard", "methods": METHODS, **kw}


def group(clean, pgd, aa=None, seeds=None):
    """Per-seed records; `aa` a list (None entries allowed) or None for no AA at all."""
    seeds = list(range(len(clean))) if seeds is None else seeds
    aa = [None] * len(clean) if aa is None else aa
    return [{"seed": s, "clean": c, "pgd": p, "aa": a} for s, c, p, a in zip(seeds, clean, pgd, aa)]


def roli_groups(d_clean, d_pgd, base=(80.0, 81.5, 79.2), pgd=(50.0, 48.7, 51.3)):
    """robust-{full_finetune,lora}-{ranli,roli}, RoLI = RanLI + the given per-(method, seed) differences."""
    g = {}
    for i, m in enumerate(["full_finetune", "lora"]):
        dc, dp = d_clean[3 * i:3 * i + 3], d_pgd[3 * i:3 * i + 3]
        g[f"robust-{m}-ranli"] = group(list(base), list(pgd))
        g[f"robust-{m}-roli"] = group([b + x for b, x in zip(base, dc)], [b + x for b, x in zip(pgd, dp)])
    return g


# ------------------------------------------------------------------------------------------------ statistics


def test_welch_matches_scipy():
    a, b = [50.1, 52.3, 49.8], [30.2, 28.9, 33.5, 31.0]
    w = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert w["t"] == pytest.approx(ref.statistic) and w["p"] == pytest.approx(ref.pvalue)
    assert w["df"] == pytest.approx(ref.df)
    lo, hi = ref.confidence_interval(0.95)
    assert w["ci"] == pytest.approx([lo, hi])
    assert w["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert w["std_a"] == pytest.approx(np.std(a, ddof=1))


def test_welch_without_two_seeds_per_side_does_not_test():
    w = welch([50.0], [30.0, 31.0])
    assert w["p"] is None and w["note"] == "n=1, no test" and w["diff"] == pytest.approx(19.5)


def test_paired_matches_scipy_ttest_rel():
    a, b = [81.2, 79.9, 83.4, 80.0], [78.0, 78.4, 80.1, 79.5]
    s = paired(a, b)
    ref = stats.ttest_rel(a, b)
    assert s["t"] == pytest.approx(ref.statistic) and s["p"] == pytest.approx(ref.pvalue) and s["df"] == 3
    assert s["ci"] == pytest.approx(list(ref.confidence_interval(0.95)))
    d = np.subtract(a, b)
    assert s["mean"] == pytest.approx(d.mean()) and s["std"] == pytest.approx(d.std(ddof=1))
    assert s["se"] == pytest.approx(d.std(ddof=1) / 2)


def test_paired_by_hand_with_two_seeds_has_one_df():
    s = paired([3.0, 5.0], [1.0, 1.0])  # d = [2, 4]: mean 3, sd sqrt(2), se 1, t = 3 with 1 df
    assert s["t"] == pytest.approx(3.0) and s["df"] == 1 and "1 df" in s["note"]
    assert s["p"] == pytest.approx(2 * (0.5 - np.arctan(3.0) / np.pi))  # Cauchy tail: t with 1 df
    one = paired([3.0], [1.0])
    assert one["p"] is None and one["note"] == "n=1, no test"


def test_sign_flip_exact_tiny_cases():
    assert sign_flip([1, 2, 3]) == pytest.approx(2 / 8)
    assert sign_flip([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)
    assert sign_flip([1, 2, -3]) == pytest.approx(1.0)  # observed sum 0: every pattern is as extreme
    d = [0.5, 1.3, -0.2, 2.1, 0.7]
    sums = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product([1, -1], repeat=len(d))]
    assert sign_flip(d) == pytest.approx(np.mean([x >= abs(sum(d)) - 1e-12 for x in sums]))


def test_sign_flip_draws_seeded_patterns_above_twenty():
    d = np.ones(25)  # exact p = 2 / 2^25; the Monte Carlo estimate is (hits + 1) / (draws + 1)
    assert sign_flip(d, draws=1000) == pytest.approx(1 / 1001)
    mixed = np.linspace(-1, 1.2, 25)
    assert sign_flip(mixed, draws=2000) == sign_flip(mixed, draws=2000)  # seeded
    assert 0 < sign_flip(mixed, draws=2000) <= 1


# ------------------------------------------------------------------------------------------------ finding 3


@pytest.mark.parametrize("d_clean,call,status", [
    ([3.1, 2.9, 3.5, 2.7, 3.3, 3.0], "RoLI better", "holds"),
    ([1.0, -1.0, 2.0, -2.0, 0.5, -0.4], "inconclusive", "not shown"),
    ([-3.1, -2.9, -3.5, -2.7, -3.3, -3.0], "RoLI worse", "does not hold"),
])
def test_roli_per_method_verdicts_and_pooled_two_way(d_clean, call, status):
    d_pgd = [2.0, 2.5, 1.8, 2.9, 2.2, 2.6]
    r = finding_roli(roli_groups(d_clean, d_pgd), spec(paper={"roli_gain_clean": 3.88, "roli_gain_pgd": 2.44}))
    (ranli,) = r["controls"]  # the spec's default: RanLI only
    rows = {m["method"]: m for m in ranli["methods"]}
    raw = [stats.ttest_1samp(d_clean[:3], 0).pvalue, stats.ttest_1samp(d_clean[3:], 0).pvalue]
    holm = sorted(raw)
    holm = {holm[0]: min(1, 2 * holm[0]), holm[1]: max(min(1, 2 * holm[0]), holm[1])}
    for m, p in zip(("full_finetune", "lora"), raw):
        clean = rows[m]["metrics"]["clean"]
        assert clean["p"] == pytest.approx(p) and clean["holm_p"] == pytest.approx(holm[p])
        assert clean["verdict"] == call
    assert r["status"] == ranli["status"] == status
    pooled = ranli["pooled"]["clean"]
    d = np.array(d_clean).reshape(2, 3)  # methods x seeds: the two-way model's residual df is 1 x 2
    resid = d - d.mean(1, keepdims=True) - d.mean(0, keepdims=True) + d.mean()
    se = np.sqrt((resid**2).sum() / 2 / 6)
    assert pooled["mean"] == pytest.approx(d.mean()) and pooled["df"] == 2 and pooled["se"] == pytest.approx(se)
    assert pooled["p_vs_paper"] == pytest.approx(2 * stats.t.sf(abs(d.mean() - 3.88) / se, 2))
    assert pooled["seed_cluster"]["p"] == pytest.approx(stats.ttest_1samp(d.mean(0), 0).pvalue)
    assert f"Against RanLI: {status} here" in r["sentence"] and call in r["sentence"]
    assert list(rows) == ["full_finetune", "lora", "adapter"]  # no linear probe RoLI
    assert r["missing"] == ["robust-adapter-ranli", "robust-adapter-roli"] and "adapter" in findings_markdown(
        findings(roli_groups(d_clean, d_pgd), spec()))


def test_roli_pairs_only_seeds_in_both_groups():
    g = {"robust-lora-ranli": group([80.0, 81.0, 82.0], [50.0, 51.0, 52.0], seeds=[0, 1, 2]),
         "robust-lora-roli": group([84.0, 83.0, 85.0], [52.0, 54.0, 53.0], seeds=[1, 2, 3])}
    row = finding_roli(g, spec(methods=["lora"]))["controls"][0]["methods"][0]
    assert row["seeds"] == [1, 2] and row["unpaired_seeds"] == [0, 3]
    clean = row["metrics"]["clean"]
    assert clean["n"] == 2 and clean["df"] == 1 and "1 df" in clean["note"]
    assert clean["p"] == pytest.approx(stats.ttest_rel([84.0, 83.0], [81.0, 82.0]).pvalue)


# ------------------------------------------------------------------------------------------------ finding 2


def lp_ft(lp_pgd, ft_pgd, lp_clean=(70.0, 70.2, 69.9), ft_clean=(70.1, 69.9, 70.0)):
    return {"robust-linear_probe-ranli": group(list(lp_clean), list(lp_pgd)),
            "robust-full_finetune-ranli": group(list(ft_clean), list(ft_pgd))}


@pytest.mark.parametrize("lp_pgd,ft_pgd,expected,status", [
    ([45.0, 45.5, 46.0], [40.0, 40.4, 39.8], "beats", "holds"),
    ([45.0, 45.2, 44.9], [45.1, 44.9, 45.0], "matches", "holds"),
    ([35.0, 35.5, 36.0], [40.0, 40.4, 39.8], "falls behind", "does not hold"),
])
def test_linear_vs_full_verdicts(lp_pgd, ft_pgd, expected, status):
    r = finding_linear_vs_full(lp_ft(lp_pgd, ft_pgd), spec())
    pgd = r["metrics"]["pgd"]
    assert pgd["verdict"] == expected and r["status"] == status
    assert pgd["p"] == pytest.approx(stats.ttest_ind(lp_pgd, ft_pgd, equal_var=False).pvalue)
    assert r["metrics"]["clean"]["verdict"] == "matches"  # within +-1 point by TOST
    assert r["sentence"].startswith({"holds": "Holds here", "does not hold": "Does not hold here"}[status])


def test_linear_vs_full_not_significant_and_wide_is_inconclusive_not_a_match():
    a, b = [40.0, 50.0, 45.0], [44.0, 47.0, 41.0]
    r = finding_linear_vs_full(lp_ft(a, b), spec())
    pgd = r["metrics"]["pgd"]
    assert pgd["p"] > 0.05 and pgd["verdict"] == "inconclusive" and r["status"] == "inconclusive"
    p1 = stats.ttest_ind(np.add(a, 1.0), b, equal_var=False, alternative="greater").pvalue
    p2 = stats.ttest_ind(np.subtract(a, 1.0), b, equal_var=False, alternative="less").pvalue
    assert pgd["tost"]["p"] == pytest.approx(max(p1, p2)) and "inconclusive on PGD" in r["sentence"]
    wide = finding_linear_vs_full(lp_ft(a, b), spec(equivalence_margin=12.0))["metrics"]["pgd"]
    assert wide["verdict"] == "matches"  # the same numbers match within a margin of 12 points


def test_linear_vs_full_with_one_seed_is_untested():
    r = finding_linear_vs_full({"robust-linear_probe-ranli": group([70.0], [45.0]),
                                  "robust-full_finetune-ranli": group([71.0], [40.0])}, spec())
    assert r["status"] == "untested" and r["metrics"]["pgd"]["note"] == "n=1, no test"
    assert "n=1, no test" in r["sentence"]


# ------------------------------------------------------------------------------------------------ finding 1


def backbone_groups(lora_std_pgd=(30.0, 31.0, 29.5)):
    g = {}
    for m, rob, std in [("full_finetune", [44.0, 45.0, 46.0], [40.0, 41.0, 40.5]),  # not PEFT: small gap is fine
                        ("lora", [50.0, 51.0, 52.0], list(lora_std_pgd)),
                        ("adapter", [49.0, 50.5, 50.0], [28.0, 29.0, 27.5])]:
        g[f"robust-{m}-ranli"] = group([80.0, 80.0, 80.0], rob)
        g[f"standard-{m}-ranli"] = group([85.0, 85.0, 85.0], std)
    return g


def test_backbone_holds_when_every_peft_method_is_far_ahead():
    r = finding_backbone(backbone_groups(), spec())
    assert r["status"] == "holds", r["sentence"]
    lora = next(m for m in r["methods"] if m["method"] == "lora")
    ref = stats.ttest_ind([50.0, 51.0, 52.0], [30.0, 31.0, 29.5], equal_var=False)
    assert lora["metrics"]["pgd"]["p"] == pytest.approx(ref.pvalue) and lora["peft"] and lora["large_margin"]
    ft = next(m for m in r["methods"] if m["method"] == "full_finetune")
    assert not ft["peft"] and ft["large_margin"] is False  # reported, marked, not counted
    assert ">= 10" in r["rule"] and r["sentence"].startswith("Holds here")
    assert "not run: linear_probe" not in r["sentence"]  # linear probe is not PEFT: not listed as a skipped one


def test_backbone_does_not_hold_when_a_peft_method_is_close():
    r = finding_backbone(backbone_groups(lora_std_pgd=(45.0, 46.0, 44.0)), spec())
    assert r["status"] == "does not hold" and "lora" in r["sentence"]


def test_backbone_margin_alone_decides_with_one_seed():
    g = {"robust-lora-ranli": group([80.0], [50.0]), "standard-lora-ranli": group([85.0], [30.0])}
    r = finding_backbone(g, spec(methods=["lora"]))
    w = r["methods"][0]["metrics"]["pgd"]
    assert w["note"] == "n=1, no test" and w["large"] and r["status"] == "holds descriptively"
    assert r["sentence"].startswith("Holds descriptively here, not tested (n = 1 on a side for lora")
    assert finding_backbone(g, spec(methods=["lora"], margin=25))["status"] == "does not hold"


# ------------------------------------------------------------------------------------------------ quirks


def test_quirk_comparison_is_variant_minus_default_paired_by_seed():
    g = {"robust-adapter-ranli": group([80.0, 81.0, 79.0], [50.0, 51.0, 49.5], seeds=[0, 1, 2]),
         "quirk-adapter_zero-ranli": group([77.0, 78.2, 75.9], [47.0, 48.1, 46.4], seeds=[0, 1, 2])}
    s = spec(compare=[{"name": "adapter all-zero init (B2)", "default": "robust-adapter-ranli",
                       "variant": "quirk-adapter_zero-ranli"}])
    (e,) = compare_quirks(g, s)
    clean = e["metrics"]["clean"]
    ref = stats.ttest_rel([77.0, 78.2, 75.9], [80.0, 81.0, 79.0])
    assert clean["mean"] == pytest.approx(-2.9666667) and clean["p"] == pytest.approx(ref.pvalue)
    assert clean["verdict"] == "variant lower" and clean["sign_flip_p"] == pytest.approx(0.25)
    assert e["sentence"].startswith("adapter all-zero init (B2): the variant is significantly lower on clean")


# ------------------------------------------------------------------------------------------------ missing / AA


def test_missing_groups_say_not_run():
    s = spec(compare=[{"name": "B2", "default": "robust-adapter-ranli", "variant": "quirk-x"}])
    r = findings({}, s)
    assert r["backbone"]["status"] == r["linear_vs_full"]["status"] == r["roli"]["status"] == "not run"
    assert r["quirks"][0]["status"] == "not run"
    md = findings_markdown(r)
    for name in ("standard-lora-ranli", "robust-linear_probe-ranli", "robust-lora-roli", "quirk-x"):
        assert name in md
    assert md.lower().count("not run") >= 3


def test_aa_only_when_every_seed_has_it():
    partial = {
        "robust-linear_probe-ranli": group([70.0, 71.0, 72.0], [45.0, 46.0, 44.0], aa=[40.0, None, 41.0]),
        "robust-full_finetune-ranli": group([70.0, 71.0, 72.0], [45.0, 46.0, 44.0], aa=[40.0, 39.0, 41.0])}
    some = finding_linear_vs_full(partial, spec())
    assert "aa" not in some["metrics"] and "AA left out" in some["aa_note"]
    assert "AA left out" in findings_markdown(findings(partial, spec()))
    none = finding_linear_vs_full(lp_ft([45.0, 46.0, 44.0], [45.0, 46.0, 44.0]), spec())
    assert "aa" not in none["metrics"] and none["aa_note"] is None  # no AA at all: nothing to explain
    every = finding_linear_vs_full({
        "robust-linear_probe-ranli": group([70.0, 71.0, 72.0], [45.0, 46.0, 44.0], aa=[40.0, 42.0, 41.0]),
        "robust-full_finetune-ranli": group([70.0, 71.0, 72.0], [45.0, 46.0, 44.0], aa=[40.0, 39.0, 41.0])}, spec())
    assert every["metrics"]["aa"]["diff"] == pytest.approx(1.0)


def test_pooled_aa_needs_every_method_to_have_it():
    g = roli_groups([1.0] * 6, [1.0, 2.0, 1.5, 1.2, 0.8, 1.1])
    for k in ("robust-full_finetune-ranli", "robust-full_finetune-roli"):
        for i, rec in enumerate(g[k]):
            rec["aa"] = 40.0 + i + (1.0 if k.endswith("roli") else 0.0)
    (c,) = finding_roli(g, spec())["controls"]
    assert "aa" in c["methods"][0]["metrics"] and "aa" not in c["methods"][1]["metrics"]
    assert "aa" not in c["pooled"] and {"clean", "pgd"} <= set(c["pooled"])  # AA pooled only when every method has it


# ------------------------------------------------------------------------------------------------ output


def test_result_is_json_and_markdown_formats_numbers():
    g = {**backbone_groups(), **lp_ft([45.0, 45.5, 46.0], [40.0, 40.4, 39.8]),  # the RoLI groups replace theirs
         **roli_groups([3.1, 2.9, 3.5, 2.7, 3.3, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0])}  # zero-variance PGD gain
    r = findings(g, spec(paper={"roli_gain_clean": 3.88}))
    assert json.loads(json.dumps(r, allow_nan=False)) == r
    pgd = r["roli"]["controls"][0]["pooled"]["pgd"]
    assert pgd["note"] == "zero residual variance, no test" and pgd["p"] is None
    md = findings_markdown(r)
    assert md.startswith("# Paper findings") and md.count("## Finding") == 3 and "p < 0.001" in md
    assert "+3.08" in md  # mean clean gain 3.0833, two decimals


def test_sections_lay_out_what_markdown_writes():
    g = {**backbone_groups(), **lp_ft([45.0, 45.5, 46.0], [40.0, 40.4, 39.8]),
         **roli_groups([3.1, 2.9, 3.5, 2.7, 3.3, 3.0], [2.0, 2.1, 1.9, 2.2, 1.8, 2.0]),
         "quirk-lora-ranli": group([80.5, 81.0, 79.0], [50.0, 49.0, 51.0])}
    s = spec(compare=[{"name": "B2", "default": "robust-lora-ranli", "variant": "quirk-lora-ranli"}],
             discussion={"roli": "Why."})
    r = findings(g, s)
    parts = sections(r)
    assert [p["key"] for p in parts] == ["backbone", "linear_vs_full", "roli", "quirks"]
    assert [p["heading"] for p in parts] == list(HEADINGS.values())
    assert [p["discussion"] for p in parts] == [None, None, "Why.", None]
    roli, quirks = parts[2], parts[3]
    assert roli["sentence"] == r["roli"]["sentence"] and roli["status"] == r["roli"]["status"]
    assert [t["caption"][:25] for t in roli["tables"]] == ["RoLI - RanLI, per method ", "RoLI - RanLI pooled over "]
    assert all(len(row) == len(t["header"]) for p in parts for t in p["tables"] for row in t["rows"])
    (quirk,) = quirks["parts"]
    assert quirk["heading"] == "B2" and quirk["sentence"] == r["quirks"][0]["sentence"]
    assert quirk["tables"][0]["header"][2] == "variant - default (mean ± std)"
    md = findings_markdown(r)
    for p in parts:
        assert f"\n## {p['heading']}\n" in md
        for t in p["tables"]:
            assert "| " + " | ".join(t["header"]) + " |" in md
    assert "\n### B2\n" in md and significance(r["spec"]) in md
    nested = findings_markdown(r, level=3)  # as the report nests them under its "## Findings"
    assert "\n### Finding 1. " in nested and "\n#### B2\n" in nested and "\n## " not in nested


def test_a_bar_in_a_name_keeps_the_tables_columns():
    """A `|` from the spec (a method or compare name) is escaped in markdown table cells, not in headings."""
    g = {f"{k.replace('lora', 'lo|ra')}": v for k, v in roli_groups([3.1, 2.9, 3.5, 2.7, 3.3, 3.0],
                                                                   [2.0, 2.1, 1.9, 2.2, 1.8, 2.0]).items()}
    g["quirk-lo|ra-ranli"] = group([80.5, 81.0, 79.0], [50.0, 49.0, 51.0])
    s = spec(methods=["full_finetune", "lo|ra"],
             compare=[{"name": "B2 | zero", "default": "robust-lo|ra-ranli", "variant": "quirk-lo|ra-ranli"}])
    md = findings_markdown(findings(g, s))
    assert "\n### B2 | zero\n" in md and "| lo\\|ra | clean |" in md
    tables, table = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if table is None:
                tables.append(table := [])
            table.append(len(re.split(r"(?<!\\)\|", line)))
        else:
            table = None
    assert len(tables) == 4 and all(len(set(t)) == 1 for t in tables)  # findings 1, 3 (two) and the quirk
    assert md_table(["a", "b|c"], [["x|y", "z"]]) == ["| a | b\\|c |", "|---|---|", "| x\\|y | z |"]


def test_p_value_format():
    assert pvalue(0.0004) == "p < 0.001" and pvalue(0.25) == "p = 0.250" and pvalue(0.012345) == "p = 0.0123"
    assert pvalue(None) == "no test"


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("bad,key", [
    ([1, 2], "mapping"),
    ({**spec(), "alhpa": 0.05}, "alhpa"),
    ({"robust": "robust", "standard": "standard"}, "methods"),
    (spec(alpha=1.5), "alpha"),
    (spec(alpha=True), "alpha"),
    (spec(margin=-1), "margin"),
    (spec(methods=[]), "methods"),
    (spec(methods=["lora", "lora"]), "lora"),
    (spec(standard="robust"), "standard"),
    (spec(robust=""), "robust"),
    (spec(compare=[{"name": "B2", "default": "a"}]), "variant"),
    (spec(compare=[{"name": "B2", "default": "a", "variant": "b", "extra": 1}]), "compare\\[0\\].extra"),
    (spec(compare=[{"name": "B2", "default": "a", "variant": "b"}] * 2), "B2"),
    (spec(paper={"roli_gain_robust": 2.44}), "paper.roli_gain_robust"),
    (spec(paper={"roli_gain_pgd": "2.44"}), "paper.roli_gain_pgd"),
])
def test_bad_spec_raises_config_error_naming_the_key(bad, key):
    with pytest.raises(ConfigError, match=key) as e:
        findings({}, bad)
    assert "\n" not in str(e.value) and str(e.value).startswith("findings spec:")


def test_load_spec_reads_yaml_and_names_the_file(tmp_path):
    good = tmp_path / "findings.yaml"
    good.write_text("robust: robust\nstandard: standard\nmethods: [lora]\npaper: {roli_gain_clean: 3.88}\n")
    s = load_spec(good)
    assert s["alpha"] == 0.05 and s["margin"] == 10.0 and s["paper"] == {"roli_gain_clean": 3.88}
    bad = tmp_path / "bad.yaml"
    bad.write_text("robust: robust\nstandard: standard\nmethods: [lora]\nalpha: 5\n")
    with pytest.raises(ConfigError, match="bad.yaml.*alpha"):
        load_spec(bad)


@pytest.mark.parametrize("groups,what", [
    ({"robust-lora-ranli": group([80.0, 81.0], [50.0, 51.0], seeds=[0, 0])}, "seed 0 twice"),
    ({"robust-lora-ranli": [{"seed": 0, "clean": 80.0}]}, "pgd"),
    ({"robust-lora-ranli": [{"clean": 80.0, "pgd": 50.0}]}, "integer seed"),
])
def test_unreadable_records_raise_results_error(groups, what):
    with pytest.raises(ResultsError, match=what):
        findings(groups, spec())
