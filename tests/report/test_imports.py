"""The report department presents and never measures: `roli report` (collect, findings, markdown, HTML, plots)
runs without importing torch or any measuring, training or sweep code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_roli_report_imports_no_torch(tmp_path):
    """The whole study page, findings included, from the archived runs, in a fresh interpreter."""
    code = (
        "import sys, json\n"
        "from roli.cli.main import main\n"
        f"rc = main(['report', {str(RESULTS / 'runs')!r}, '--out', {str(tmp_path)!r},"
        f" '--findings', 'recipes/study/findings.yaml'])\n"
        "print(json.dumps([rc, sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'roli.')))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    rc, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and (tmp_path / "report.html").exists() and (tmp_path / "findings.json").exists()
    assert not [m for m in loaded if m == "torch" or m.startswith("torch.")], loaded
    upward = [m for m in loaded if m.startswith(("roli.training", "roli.sweep", "roli.backbones", "roli.transfer",
                                                 "roli.attacks", "roli.data"))]
    assert not upward, upward
    assert sorted(m for m in loaded if m.startswith("roli.evaluation.")) == ["roli.evaluation.expected",
                                                                          "roli.evaluation.ordering"], loaded
