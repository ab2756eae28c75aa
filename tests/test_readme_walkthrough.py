"""The README's "bring your own checkpoint" walkthrough runs as written, on shipped data.

The block's four variables are the user's (their file, their architecture, their data, the paper cell to start
from); the test gives them shipped equivalents: the robust tiny ViT saved as a plain state dict (a user's file, not
roli's), loaded as the `vit_tiny_28` architecture, the shipped MNIST digits and the tiny LoRA recipe. Each `roli run`
also gets small limits and one epoch (appended to its `--set`) and AutoAttack a few images, so the block's commands,
order, recipe and flags are the README's own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roli.checkpoints import load_file

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "roli" / "checkpoints" / "vit_tiny_28_fmnist_robust.pt"
VALUES = {"ARCH": "vit_tiny_28", "CKPT": "my_robust_vit.pth", "DATA": "",
          "BASE": "recipes/tiny/mnist_lora_ranli.yaml"}
SMALL = "data.train_limit=64 data.val_limit=16 data.test_limit=16 train.epochs=1 stage1.epochs=1"


def walkthrough() -> str:
    """The bash block right after the README's walkthrough marker."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- walkthrough:.*?-->\n```bash\n(.*?)```", text, flags=re.S)
    assert m, "README.md lost its walkthrough block (<!-- walkthrough: ... --> then a bash block)"
    return m.group(1)


def shipped_version(block: str) -> str:
    """The block with the user's four values replaced by shipped ones, small runs and a small AutoAttack."""
    for name, value in VALUES.items():
        block, n = re.subn(rf"^{name}=\S*", f"{name}={value}", block, flags=re.M)
        assert n == 1, f"the walkthrough no longer sets {name}= once"
    block, runs = re.subn(r"^(roli run .*?)(\s+#.*)?$", lambda m: _small(m.group(1)), block, flags=re.M)
    block, evals = re.subn(r"--limit 1000", "--limit 6", block)
    assert runs == 2 and evals == 2, (runs, evals)
    return block


def _small(command: str) -> str:
    return f"{command} {SMALL}" if "--set" in command else f"{command} --set {SMALL}"


@pytest.mark.timeout(600)
def test_the_walkthrough_runs_on_shipped_data(tmp_path):
    obj = load_file(SHIPPED)
    torch.save({"state_dict": {k[len("net."):]: v for k, v in obj["model"].items() if k.startswith("net.")}},
               tmp_path / VALUES["CKPT"])
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    script = "set -euo pipefail\nroli() { python -m roli \"$@\"; }\n" + shipped_version(walkthrough())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded 54 tensors from my_robust_vit.pth: format auto -> timm" in out.stderr  # the README's quoted line
    runs = tmp_path / "runs" / "mine"
    for name, init in (("mine_ranli", "ranli"), ("mine_roli", "roli")):
        res = json.loads((runs / name / "results.json").read_text())
        assert res["status"] == "complete" and res["init"] == init and res["method"] == "lora"
        assert res["backbone"]["checkpoint"]["file"].endswith(VALUES["CKPT"])
        ev = json.loads(next((runs / name).glob("eval-*-full.json")).read_text())
        assert ev["results"]["autoattack"]["n"] == 6
    assert "RoLI" in (runs / "report.md").read_text() and (runs / "report.html").is_file()


def test_the_quoted_error_is_what_roli_says(tmp_path, capsys):
    """The README's first 'when it does not' line is the real message for a file of another architecture."""
    from roli.cli.main import main

    obj = load_file(SHIPPED)
    torch.save({k[len("net."):]: v for k, v in obj["model"].items() if k.startswith("net.")}, tmp_path / "f.pth")
    (tmp_path / "r.yaml").write_text(f"base: {REPO / 'recipes/tiny/mnist_lora_ranli.yaml'}\n"
                                     f"backbone: {{name: test_vit, checkpoint: {tmp_path / 'f.pth'}}}\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch, another architecture? ['cls_token: file (1, 1, 128) vs model (1, 1, 64)'" in err
    assert "shape mismatch, another architecture? ['cls_token: file (1, 1, 128) vs model (1, 1, 64)'" in \
        (REPO / "README.md").read_text()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
