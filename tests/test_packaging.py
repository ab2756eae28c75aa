"""The wheel: `python -m build` output installs into a fresh virtualenv and runs from the shipped data alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = """\
backbone: {name: vit_tiny_28_fmnist_robust}
data: {name: mnist, batch_size: 64, eval_batch_size: 128, train_limit: 256, val_limit: 64, test_limit: 64}
threat: {eps: 0.1}
attack: {steps: 1, step_size: 0.1}
eval: {attack: {steps: 2, step_size: 0.05}}
transfer: {name: linear_probe}
train: {epochs: 1, optimizer: sgd, lr: 0.01, warmup_epochs: 0}
run: {threads: 1}
"""


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    pytest.importorskip("build", reason="`build` is a test dependency (pip install '.[test]')")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("roli-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # torch & co. come from this environment (a .pth line adds its site-packages *after* the venv's own, and does not
    # run the editable install's .pth there), roli from the wheel alone.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return venv


def _roli(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "roli"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_installs_and_runs_one_epoch_from_the_shipped_data(wheel_venv, tmp_path):
    where = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", "import roli; print(roli.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(wheel_venv) in where  # the installed wheel, not the source tree
    listed = _roli(wheel_venv, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "vit_tiny_28_fmnist_robust" in listed.stdout and "mnist" in listed.stdout
    (tmp_path / "r.yaml").write_text(RECIPE)
    ran = _roli(wheel_venv, tmp_path, "run", "r.yaml", "--out", "runs")
    assert ran.returncode == 0, ran.stderr[-2000:]
    res = json.loads(next((tmp_path / "runs").glob("*/results.json")).read_text())
    assert res["status"] == "complete" and res["test"]["n"] == 64 and len(res["history"]) == 1
    html = (tmp_path / "runs" / "report.html").read_text()  # the stylesheet is package data (report/report.css)
    assert "<style>\nbody { font:" in html
    assert _roli(wheel_venv, tmp_path, "--version").stdout.strip() == f"roli {res['versions']['roli']}"
