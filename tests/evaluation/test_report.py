"""write_report: report.md, report.csv and the scatter plot hold exactly the runs' results.json numbers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

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
