"""Two roli processes in one --out (issue 26): they share a RoLI stage 1 and a report in turn (locks), instead of
training the same stage-1 folder at once or deleting each other's report files mid-write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from roli.config import dump_config

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
WRITER = """
import sys
from pathlib import Path
from roli.report.write import write_report
for _ in range(int(sys.argv[3])):
    write_report(Path(sys.argv[1]), [Path(sys.argv[2])])
print("OK")
"""


def _start(*argv: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.timeout(300)
def test_two_processes_write_one_report_in_turn(finished_run, tmp_path):
    """Without the lock, one writer deleted the other's report_scatter.png before it was embedded in report.html."""
    run_dir = tmp_path / "runs" / "a"
    shutil.copytree(finished_run[0], run_dir)
    procs = [_start("-c", WRITER, str(tmp_path / "runs"), str(run_dir), "6", cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=280) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    html = (tmp_path / "runs" / "report.html").read_text()
    assert "data:image/png;base64," in html and (tmp_path / "runs" / "report_scatter.png").is_file()


@pytest.mark.timeout(300)
def test_two_roli_runs_share_one_stage_1(fast_cfg, tmp_path):
    """A full-finetuning and a LoRA RoLI run started together in one --out: one stage-1 folder, trained once, used
    by both (the second waits for the first's, then reuses it)."""
    for name, method in (("full", "full_finetune"), ("lora", "lora")):
        dump_config(fast_cfg([f"transfer.name={method}", "transfer.init=roli", "train.epochs=1", "stage1.epochs=2"]),
                    tmp_path / f"{name}.yaml")
    procs = [_start("-m", "roli", "run", f"{name}.yaml", "--out", "runs", cwd=tmp_path) for name in ("full", "lora")]
    outs = [p.communicate(timeout=280) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    stage1 = sorted(p.name for p in (tmp_path / "runs").glob("stage1-*") if p.is_dir())
    assert len(stage1) == 1, stage1
    used = {json.loads((tmp_path / "runs" / n / "results.json").read_text())["stage1"]["run_dir"] for n in ("full", "lora")}
    assert {Path(u).name for u in used} == {stage1[0]}
    logs = "".join(o[1] for o in outs)
    assert logs.count("RoLI stage 1: adversarial linear probing") == 1 and "RoLI stage 1: reusing" in logs
