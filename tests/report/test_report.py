"""write_report: report.md, report.csv and the scatter plot hold exactly the runs' results.json numbers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from roli.evaluation.ordering import check_ordering
from roli.report.collect import collect
from roli.report.write import write_report
from roli.training.pipeline import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_runs(finished_run, fast_cfg, tmp_path_factory):
    """The shared full-finetune run and a 1-epoch linear probe, plus a failed run that must be left out."""
    shared_dir, shared, _ = finished_run
    out = tmp_path_factory.mktemp("report_runs")
    lp = run(fast_cfg(["transfer.name=linear_probe", "train.epochs=1"]), out=out, name="lp")
    failed = out / "failed"
    shutil.copytree(shared_dir, failed)
    res = json.loads((failed / "results.json").read_text())
    (failed / "results.json").write_text(json.dumps({**res, "status": "failed", "error": "loss is nan"}))
    return [(shared_dir, shared), (Path(lp["run_dir"]), lp)], failed


def _runs_section(text: str) -> list[str]:
    """The lines of report.md's per-run section (the last one)."""
    return text.split("\n## Runs\n", 1)[1].splitlines()


def _expected(run_dir: Path, res: dict) -> dict:
    return {"run": run_dir.name, "method": res["method"], "init": res["init"],
            "backbone": res["config"]["backbone"]["name"], "data": res["config"]["data"]["name"],
            "selected_epoch": res["selected_epoch"], "val_clean": res["best_val"]["clean"],
            "val_robust": res["best_val"]["robust"], "test_clean": res["test"]["clean"],
            "test_pgd": res["test"]["pgd"], "seconds": res["seconds"]}


def test_report_files_and_numbers(two_runs, tmp_path):
    runs, failed = two_runs
    md = write_report(tmp_path, [d for d, _ in runs] + [failed])
    assert md == tmp_path / "report.md"
    for f in ("report.md", "report.csv", "report_scatter.png"):
        assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f
    assert (tmp_path / "report_scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(tmp_path / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["shared", "lp"]  # the failed run is left out
    for row, (run_dir, res) in zip(rows, runs):
        exp = _expected(run_dir, res)
        for k, v in exp.items():
            got = row[k]
            if isinstance(v, str):
                assert got == v, k
            else:
                assert float(got) == v, k  # exact: the CSV holds the results.json values
        assert float(row["eps"]) == pytest.approx(res["test"]["threat"]["eps"])
        assert int(row["pgd_steps"]) == res["test"]["attack"]["steps"]
        assert int(row["n_test"]) == res["test"]["n"]

    text = md.read_text()
    assert "failed" not in text
    lines = {line.split("|")[1].strip(): line for line in _runs_section(text) if line.startswith("| ")}
    assert set(lines) == {"run", "shared", "lp"}
    assert "test PGD-3" in lines["run"]
    for run_dir, res in runs:
        cells = [c.strip() for c in lines[run_dir.name].strip("|").split("|")]
        assert cells[1:3] == [res["method"], res["init"]]
        assert cells[6] == str(res["selected_epoch"])
        assert cells[7:11] == [f"{res['best_val']['clean']:.2f}", f"{res['best_val']['robust']:.2f}",
                               f"{res['test']['clean']:.2f}", f"{res['test']['pgd']:.2f}"]
    assert "report_scatter.png" in text and "32 images" in text


def test_collect_skips_incomplete_runs(two_runs):
    runs, failed = two_runs
    rows = collect([failed] + [d for d, _ in runs])
    assert [r["run"] for r in rows] == ["shared", "lp"]


def test_report_without_complete_runs(two_runs, tmp_path):
    _, failed = two_runs
    md = write_report(tmp_path / "r", [failed])
    assert "No complete runs" in md.read_text()
    assert not (tmp_path / "r" / "report.csv").exists() and not (tmp_path / "r" / "report_scatter.png").exists()


def test_report_is_regenerated(two_runs, tmp_path):
    runs, _ = two_runs
    write_report(tmp_path, [d for d, _ in runs])
    write_report(tmp_path, [runs[1][0]])
    with open(tmp_path / "report.csv", newline="") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["lp"]


@pytest.fixture(scope="module")
def evaluated_run(finished_run, tmp_path_factory):
    """A copy of the shared run with `roli eval` full (custom, cheap AutoAttack) and sweep JSONs beside best.pt."""
    from roli.cli.main import main

    shared_dir, _, _ = finished_run
    run_dir = tmp_path_factory.mktemp("evaluated") / "shared"
    shutil.copytree(shared_dir, run_dir)
    ckpt = str(run_dir / "best.pt")
    assert main(["eval", "--checkpoint", ckpt, "--suite", "full", "--aa", "version=custom", "attacks=[apgd-ce]",
                 "n_iter=5", "apgd_restarts=1"]) == 0
    assert main(["eval", "--checkpoint", ckpt, "--suite", "sweep", "--limit", "16"]) == 0
    return run_dir


def test_report_with_autoattack_sweep_and_curves(evaluated_run, two_runs, tmp_path):
    runs, _ = two_runs
    lp_dir = runs[1][0]
    res = json.loads((evaluated_run / "results.json").read_text())
    full = json.loads((evaluated_run / "eval-synthetic-test-full.json").read_text())
    sweep = json.loads((evaluated_run / "eval-synthetic-test-sweep.json").read_text())
    aa = full["results"]["autoattack"]
    assert aa["n"] == res["test"]["n"]  # the run's own test set

    md = write_report(tmp_path, [evaluated_run, lp_dir])
    for name in ("report.md", "report.csv", "report.html", "report_scatter.png", "report_eps.png",
                 "report_val_curves.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = md.read_text()
    table = [line for line in _runs_section(text) if line.startswith("| ")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[9:12] == ["test clean", "test PGD-3", "test AA"]
    cells = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in table[1:])}
    assert cells["shared"][9:12] == [f"{res['test']['clean']:.2f}", f"{res['test']['pgd']:.2f}", f"{aa['acc']:.2f}"]
    assert cells[lp_dir.name][11] == "–"  # no AutoAttack for this run
    assert "AutoAttack (custom)" in text and f"on {aa['n']} test images" in text

    with open(tmp_path / "report.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["shared"]["test_aa"]) == aa["acc"] and rows[lp_dir.name]["test_aa"] == ""
    assert float(rows["shared"]["test_pgd"]) == res["test"]["pgd"]

    # sanity section: the eval JSONs' checks and clean >= PGD >= AA on the table's numbers, each failure named
    assert "## Sanity checks" in text
    table_check = check_ordering({"clean": res["test"]["clean"], "pgd": res["test"]["pgd"], "autoattack": aa["acc"]})
    checks = full["checks"] + sweep["checks"] + [table_check.to_dict()]
    failed = [c for c in checks if not c["passed"]]
    for c in failed:
        assert f"shared: {c['name']} FAILED" in text and c["message"] in text
    if not failed:
        assert f"- shared: all {len(checks)} checks passed" in text
    assert f"- {lp_dir.name}: no checks yet" in text
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3


# --- the AutoAttack column and the eval-file checks follow the run's threat model (hand-written JSONs) ----------

EPS8, EPS4 = 8 / 255, 4 / 255


def _write_run(run_dir: Path, *, style: str = "threat", norm: str = "linf", eps: float = EPS8, n: int = 200) -> Path:
    """A complete results.json: the threat model in config.threat (current layout, config.attack without it) or
    in config.attack (older results.json)."""
    run_dir.mkdir(parents=True)
    cfg = {"backbone": {"name": "vit_tiny_28"}, "data": {"name": "synthetic"}}
    if style == "threat":
        cfg.update(threat={"norm": norm, "eps": eps}, attack={"name": "pgd", "steps": 7})
        test_attack = {"name": "pgd", "steps": 10}
    else:
        cfg.update(attack={"name": "pgd", "norm": norm, "eps": eps, "steps": 7})
        test_attack = {"name": "pgd", "norm": norm, "eps": eps, "steps": 10}
    res = {"status": "complete", "config": cfg, "method": "full_finetune", "init": "roli", "selected_epoch": 2,
           "best_val": {"clean": 70.0, "robust": 40.0}, "seconds": 12.0,
           "test": {"clean": 72.0, "pgd": 45.0, "n": n, "attack": test_attack}}
    (run_dir / "results.json").write_text(json.dumps(res))
    return run_dir


def _write_eval(run_dir: Path, tag: str, *, started: str, acc: float | None = 40.0, norm: str = "linf",
                eps: float = EPS8, version: str = "standard", n: int = 200, split: str = "test",
                suite: str | None = "full", checks: tuple = (), threat: dict | None = None,
                aa_threat: bool = True) -> str:
    """eval-synthetic-<split>-<tag>.json as `roli eval` writes it (the fields the report reads); `acc` None: no
    AutoAttack in it. `threat`: the top-level {norm, eps}; `aa_threat` False: AutoAttack settings without them."""
    pgd = {"name": "pgd", "norm": norm, "eps": eps, "steps": 10}
    ev = {"checkpoint": str(run_dir / "best.pt"), "started": started, "suite": suite,
          "data": {"name": "synthetic", "split": split}, "attack": pgd, "attacks": {"pgd": pgd},
          "results": {"clean": {"acc": 72.0, "n": n}, "pgd": {"acc": 45.0, "n": n}},
          "checks": [{"name": name, "passed": passed, "message": f"{name} message"} for name, passed in checks]}
    if acc is not None:
        aa = {"name": "autoattack", "version": version, "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
              **({"norm": norm, "eps": eps} if aa_threat else {})}
        ev["attacks"]["autoattack"] = aa
        ev["results"]["autoattack"] = {"acc": acc, "n": n, "seconds": 3.0}
    if threat is not None:
        ev["threat"] = threat
    name = f"eval-synthetic-{split}-{tag}.json"
    (run_dir / name).write_text(json.dumps(ev))
    return name


def _md_table(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The per-run table of report.md: header and cells by run."""
    table = [[c.strip() for c in line.strip("|").split("|")] for line in _runs_section(text) if line.startswith("| ")]
    return table[0], {row[0]: dict(zip(table[0], row)) for row in table[1:]}


def _csv_rows(out: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(out / "report.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), {r["run"]: r for r in reader}


def test_sanity_lines_count_checks_in_words():
    from roli.report.tables import sanity_lines

    def text(passed, failed=0, checked=1, unchecked=()):
        fails = [{"run": "r-s0", "name": "finite", "file": "e.json", "message": "nan"}] * failed
        entry = {"label": "g", "runs": checked + len(unchecked), "checked": checked, "passed": passed,
                 "failed": fails, "unchecked": list(unchecked)}
        return [t for failed, t in sanity_lines(entry) if not failed]

    assert text(1) == ["g: the 1 check passed"]
    assert text(3, checked=2) == ["g: all 3 checks passed over 2 runs"]
    assert text(1, failed=1) == ["g: 1 check passed, 1 failed"]
    assert text(2, failed=1, checked=2, unchecked=["r-s2"]) == ["g: 2 checks passed, 1 failed over 2 runs; no checks "
                                                                "yet for r-s2"]


def test_run_threat_current_and_older_results():
    from roli.report.collect import run_threat

    assert run_threat({"config": {"threat": {"norm": "l2", "eps": 0.5}, "attack": {"name": "pgd"}}}) == ("l2", 0.5)
    assert run_threat({"config": {"attack": {"norm": "linf", "eps": EPS8}}}) == ("linf", EPS8)
    # config.threat is the run's threat model wherever config.attack says something else
    both = {"threat": {"norm": "linf", "eps": EPS8}, "attack": {"norm": "linf", "eps": EPS4}}
    assert run_threat({"config": both}) == ("linf", EPS8)
    assert run_threat({"config": {"threat": {"norm": "linf", "eps": "8/255"}}}) == ("linf", pytest.approx(EPS8))


def test_aa_column_takes_the_runs_eps_not_the_newest_file(tmp_path):
    run_dir = _write_run(tmp_path / "runs" / "r8")
    match = _write_eval(run_dir, "full", started="2024-01-01T00:00:00+00:00", acc=40.0)
    other = _write_eval(run_dir, "full-4", started="2024-02-01T00:00:00+00:00", acc=60.0, eps=EPS4)
    val = _write_eval(run_dir, "full", started="2024-03-01T00:00:00+00:00", acc=50.0, split="val")

    [row] = collect([run_dir])
    assert row["test_aa"] == 40.0  # the 8/255 number, not the newer 4/255 one (60.0)
    assert (row["aa_file"], row["aa_version"], row["aa_n"]) == (match, "standard", 200)
    assert [i["file"] for i in row["aa_ignored"]] == [other, val]

    text = write_report(tmp_path / "out", [run_dir]).read_text()
    _, cells = _md_table(text)
    assert cells["r8"]["test AA"] == "40.00" and "60.00" not in text
    assert f"{other} (synthetic test, linf eps 4/255)" in text  # the footnote names what was ignored, with its eps
    _, rows = _csv_rows(tmp_path / "out")
    assert float(rows["r8"]["test_aa"]) == 40.0 and rows["r8"]["aa_file"] == match


def test_only_other_eps_autoattack_shows_no_number(tmp_path, caplog):
    run_dir = _write_run(tmp_path / "runs" / "r8")
    other = _write_eval(run_dir, "full", started="2024-02-01T00:00:00+00:00", acc=60.0, eps=EPS4)

    with caplog.at_level("WARNING", logger="roli.report.collect"):
        text = write_report(tmp_path / "out", [run_dir]).read_text()
    head, _ = _md_table(text)
    assert "test AA" not in head and "AA version" not in head and "60.00" not in text
    assert "AutoAttack evaluations ignored" in text and f"r8: {other} (synthetic test, linf eps 4/255)" in text
    assert any(other in r.getMessage() and "4/255" in r.getMessage() for r in caplog.records)
    _, rows = _csv_rows(tmp_path / "out")
    assert rows["r8"]["test_aa"] == "" and rows["r8"]["aa_version"] == "" and rows["r8"]["aa_ignored"] == other


def test_standard_autoattack_preferred_then_more_images_then_newest(tmp_path):
    run_dir = _write_run(tmp_path / "runs" / "r8", n=200)
    _write_eval(run_dir, "custom", started="2024-03-01T00:00:00+00:00", acc=55.0, version="custom", n=1000)
    _write_eval(run_dir, "std100", started="2024-02-01T00:00:00+00:00", acc=50.0, n=100)
    _write_eval(run_dir, "std200-old", started="2023-12-01T00:00:00+00:00", acc=41.0, n=200)
    chosen = _write_eval(run_dir, "std200", started="2024-01-01T00:00:00+00:00", acc=42.0, n=200)

    [row] = collect([run_dir])
    assert (row["test_aa"], row["aa_version"], row["aa_n"]) == (42.0, "standard", 200)
    assert row["aa_file"] == chosen
    assert row["aa_ignored"] == []  # all are on the run's threat model: preferred over, not ignored

    text = write_report(tmp_path / "out", [run_dir]).read_text()
    head, cells = _md_table(text)
    assert head[head.index("test AA"):head.index("test AA") + 3] == ["test AA", "AA version", "AA n"]
    assert [cells["r8"][c] for c in ("test AA", "AA version", "AA n")] == ["42.00", "standard", "200"]
    assert "AutoAttack (standard)" in text and "on 200 test images" in text


def test_csv_has_aa_version_and_n_columns(tmp_path):
    with_aa = _write_run(tmp_path / "runs" / "a")
    _write_eval(with_aa, "full", started="2024-01-01T00:00:00+00:00", acc=42.0, version="plus", n=150)
    _write_eval(with_aa, "full-4", started="2024-02-01T00:00:00+00:00", acc=60.0, eps=EPS4, n=1000)
    without = _write_run(tmp_path / "runs" / "b")

    write_report(tmp_path / "out", [with_aa, without])
    fields, rows = _csv_rows(tmp_path / "out")
    assert (float(rows["a"]["test_aa"]), rows["a"]["aa_version"], int(rows["a"]["aa_n"])) == (42.0, "plus", 150)
    assert {"norm", "eps", "test_aa", "aa_version", "aa_n", "aa_file", "aa_ignored"} <= set(fields)
    assert (rows["a"]["norm"], float(rows["a"]["eps"])) == ("linf", EPS8)
    assert rows["a"]["aa_ignored"] == "eval-synthetic-test-full-4.json"
    assert [rows["b"][k] for k in ("test_aa", "aa_version", "aa_n", "aa_file", "aa_ignored")] == [""] * 5


@pytest.mark.parametrize("style", ["threat", "attack"])
def test_current_and_older_results_json(tmp_path, style):
    run_dir = _write_run(tmp_path / "runs" / "r8", style=style)
    match = _write_eval(run_dir, "full", started="2024-01-01T00:00:00+00:00", acc=40.0)
    _write_eval(run_dir, "full-4", started="2024-02-01T00:00:00+00:00", acc=60.0, eps=EPS4)
    _write_eval(run_dir, "full-l2", started="2024-03-01T00:00:00+00:00", acc=70.0, norm="l2")  # same eps, L2

    [row] = collect([run_dir])
    assert row["test_aa"] == 40.0
    assert (row["norm"], row["eps"], row["aa_file"]) == ("linf", EPS8, match)
    text = write_report(tmp_path / "out", [run_dir]).read_text()
    assert _md_table(text)[1]["r8"]["eps"] == "8/255" and "l2 eps 8/255" in text


def test_eval_threat_top_level_and_eps_tolerance(tmp_path):
    from roli.report.collect import on_threat

    run_dir = _write_run(tmp_path / "runs" / "r8")
    # refactored eval JSON: the threat model at the top level, none in the AutoAttack settings
    top = _write_eval(run_dir, "top", started="2024-01-01T00:00:00+00:00", acc=40.0, aa_threat=False,
                      threat={"norm": "linf", "eps": EPS8})
    # top level and AutoAttack settings disagree: not trusted
    _write_eval(run_dir, "mixed", started="2024-02-01T00:00:00+00:00", acc=60.0, threat={"norm": "linf", "eps": EPS4})
    # no threat model stated at all: not trusted
    _write_eval(run_dir, "none", started="2024-03-01T00:00:00+00:00", acc=61.0, aa_threat=False)

    [row] = collect([run_dir])
    assert row["test_aa"] == 40.0
    assert row["aa_file"] == top
    assert {i["file"]: i["threat"] for i in row["aa_ignored"]} == {
        "eval-synthetic-test-mixed.json": "linf eps 4/255, linf eps 8/255",
        "eval-synthetic-test-none.json": "no threat model stated"}

    ev = json.loads((run_dir / top).read_text())
    ev["threat"]["eps"] = EPS8 + 1e-12  # float noise, e.g. from another "8/255" parser
    assert on_threat(ev, ("linf", EPS8), "synthetic", "autoattack")
    ev["threat"]["eps"] = EPS8 + 1e-6
    assert not on_threat(ev, ("linf", EPS8), "synthetic", "autoattack")


def test_sanity_checks_only_from_evals_on_the_runs_threat_model(tmp_path):
    run_dir = _write_run(tmp_path / "runs" / "r8")
    _write_eval(run_dir, "full", started="2024-01-01T00:00:00+00:00", acc=40.0, checks=[("finite", True)])
    bad = _write_eval(run_dir, "full-4", started="2024-02-01T00:00:00+00:00", acc=60.0, eps=EPS4,
                      checks=[("finite", False)])
    _write_eval(run_dir, "quick-4", started="2024-02-02T00:00:00+00:00", acc=None, eps=EPS4, suite="quick",
                checks=[("ordering", False)])
    _write_eval(run_dir, "quick-val", started="2024-02-03T00:00:00+00:00", acc=None, split="val", suite="quick",
                checks=[("ordering", False)])

    text = write_report(tmp_path / "out", [run_dir]).read_text()
    assert "FAILED" not in text and bad not in text.split("## Sanity checks")[1]
    assert "- r8: all 2 checks passed" in text  # the 8/255 file's check and clean >= PGD >= AA on the table


def test_eps_plot_only_from_sweeps_on_the_runs_threat_model(tmp_path):
    def sweep(run_dir: Path, tag: str, started: str, norm: str) -> None:
        pgd = {"name": "pgd", "norm": norm, "eps": EPS8, "steps": 10}
        ev = {"started": started, "suite": "sweep", "data": {"name": "synthetic", "split": "test"}, "attack": pgd,
              "attacks": {"sweep": pgd}, "results": {"clean": {"acc": 72.0, "n": 200}}, "checks": [],
              "sweep": [{"eps": 0.0, "acc": 72.0}, {"eps": EPS8, "acc": 45.0}, {"eps": 0.5, "acc": 0.0}]}
        (run_dir / f"eval-synthetic-test-{tag}.json").write_text(json.dumps(ev))

    run_dir = _write_run(tmp_path / "runs" / "r8")
    sweep(run_dir, "sweep-l2", "2024-02-01T00:00:00+00:00", "l2")
    write_report(tmp_path / "out", [run_dir])
    assert not (tmp_path / "out" / "report_eps.png").exists()
    sweep(run_dir, "sweep", "2024-01-01T00:00:00+00:00", "linf")
    write_report(tmp_path / "out", [run_dir])
    assert (tmp_path / "out" / "report_eps.png").is_file()
