"""`roli interpolate RUN`: the curve's files, the summary line, and one-line refusals (exit 2)."""

from __future__ import annotations

import json
import shutil

import pytest

from roli.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the shared finished run (interpolate writes into the run folder)."""
    src, res, _ = finished_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, res


def test_interpolate_writes_the_curve_and_prints_the_choice(run_copy, capsys):
    run_dir, res = run_copy
    assert main(["interpolate", str(run_dir), "--alphas", "0.5", "--device", "cpu"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    curve = json.loads((run_dir / "interpolate" / "curve.json").read_text())
    assert [r["alpha"] for r in curve["rows"]] == [0.0, 0.5, 1.0]
    assert curve["rows"][-1]["val_clean"] == res["best_val"]["clean"]  # alpha 1 is best.pt
    assert f"chosen alpha {curve['chosen_alpha']:g}" in out and "curve.png" in out
    assert {p.name for p in (run_dir / "interpolate").iterdir()} == {"curve.csv", "curve.json", "curve.png"}
    assert main(["interpolate", str(run_dir), "--alphas", "1", "--device", "cpu"]) == 0  # a second curve ...
    assert (run_dir / "interpolate-2" / "curve.json").is_file()  # ... goes beside the first
    assert json.loads((run_dir / "interpolate" / "curve.json").read_text()) == curve


@pytest.mark.parametrize("args, expected", [
    (["--alphas", "0,1.5"], "every alpha must be a number in [0, 1]"),
    (["--alphas", "half"], "separated by commas"),
])
def test_bad_alphas_exit_2_with_one_line(run_copy, capsys, args, expected):
    run_dir, _ = run_copy
    assert main(["interpolate", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roli interpolate: error: --alphas") and expected in err[0]
    assert not (run_dir / "interpolate").exists()


def test_unknown_or_unfinished_runs_and_a_used_out_exit_2(run_copy, tmp_path, capsys):
    run_dir, _ = run_copy
    assert main(["interpolate", str(tmp_path / "no-such-run")]) == 2
    assert "not a roli run folder" in capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**results, "status": "running"}))
    assert main(["interpolate", str(run_dir)]) == 2
    assert "has not completed" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("keep")
    assert main(["interpolate", str(run_dir), "--out", str(used)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and (used / "mine.txt").read_text() == "keep"
    with pytest.raises(SystemExit) as e:
        main(["interpolate", str(run_dir), "--split", "test"])
    assert e.value.code == 2
