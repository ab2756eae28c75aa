"""The Python blocks of docs/api.md run as written, in order (so the documented API cannot drift).

They run in a subprocess: the page registers a transfer method, which must not leak into the other tests' registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNER = """
import re, sys, torch
torch.set_num_threads(1)
blocks = re.findall(r"```python\\n(.*?)```", open(sys.argv[1]).read(), flags=re.S)
assert len(blocks) >= 7, len(blocks)
namespace = {}
for i, code in enumerate(blocks):
    exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
print("ALL BLOCKS RAN")
"""


def test_api_page_runs(tmp_path):
    (tmp_path / "recipes").symlink_to(REPO / "recipes")  # the page writes under runs/: keep it out of the repository
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", RUNNER, str(REPO / "docs" / "api.md")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "ALL BLOCKS RAN" in out.stdout, out.stderr[-3000:]
    assert (tmp_path / "runs" / "api" / "full_roli.safetensors.json").is_file()
