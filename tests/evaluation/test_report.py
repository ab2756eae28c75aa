"""write_report: report.md, report.csv and the scatter plot hold exactly the runs' results.json numbers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from roli.evaluation.checks import check_ordering
from roli.evaluation.report import collect, write_report
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
        assert float(row["eps"]) == pytest.approx(res["test"]["attack"]["eps"])
        assert int(row["pgd_steps"]) == res["test"]["attack"]["steps"]
        assert int(row["n_test"]) == res["test"]["n"]

    text = md.read_text()
    assert "failed" not in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
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
    table = [line for line in text.splitlines() if line.startswith("| ")]
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
