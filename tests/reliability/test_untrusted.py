"""Untrusted files and the network (docs/reliability.md, guarantee 7): every torch.load is weights_only, YAML is
safe-loaded, a crafted pickle is refused and never executed (through every door: backbone checkpoint, `roli eval`,
a resumed checkpoint.pt, a RoLI stage-1 head), the test suite cannot reach the network, and roli leaves the process
environment alone (no hub variables) while a hub request fails fast with a clear message."""

from __future__ import annotations

import ast
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
import yaml

import netguard
from reliability.bad_inputs import Workspace, crafted_pickle
from reliability.helpers import REPO, cli
from roli.backbones import BackboneError, build_model
from roli.config import BackboneConfig, ConfigError, load_config
from roli.errors import CheckpointError
from roli.sweep.grid import load_grid

SRC = REPO / "src" / "roli"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):  # module.function (a method like model.eval() is not `eval`)
                name = f"{f.value.id}.{f.attr}" if isinstance(f.value, ast.Name) else f".{f.attr}"
            else:
                name = getattr(f, "id", "")
            yield name, node


def test_every_load_in_roli_is_safe():
    """Source scan: torch.load only with weights_only=True; no pickle/yaml.load/eval/exec/allow_pickle (the CIFAR
    reader's restricted unpickler, which builds only numpy arrays, is the one pickle reader)."""
    unsafe = []
    for path in sorted(SRC.rglob("*.py")):
        for name, node in _calls(ast.parse(path.read_text())):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(SRC)}:{node.lineno} {name}"
            if name == "torch.load" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                             and kw["weights_only"].value is True):
                unsafe.append(where)
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads", "eval",
                        "exec", "marshal.loads", "dill.load"):
                unsafe.append(where)
            if "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant)
                                             and kw["allow_pickle"].value is False):
                unsafe.append(where)
    assert not unsafe, unsafe
    assert "_ArrayUnpickler" in (SRC / "data" / "cifar.py").read_text()


@pytest.fixture
def crafted(tmp_path):
    """A checkpoint whose unpickling creates the file PWNED; proven live with a trusting loader."""
    ws = Workspace(tmp_path)
    path = crafted_pickle(ws)
    marker = tmp_path / "PWNED"
    torch.load(path, weights_only=False)  # what roli must never do: it runs the payload
    assert marker.exists()
    marker.unlink()
    return ws, path, marker


def test_a_crafted_pickle_is_refused_and_never_executed(crafted, finished_run, fast_cfg, tmp_path, capsys):
    ws, path, marker = crafted
    doors = {
        "backbone checkpoint": ws.run(f"backbone.checkpoint={path}"),
        "roli eval": ["eval", "--checkpoint", path],
        "roli export": None,
        "resumed checkpoint.pt": None,
        "RoLI stage-1 head": None,
    }
    run_copy = tmp_path / "resumable"
    shutil.copytree(finished_run[0], run_copy)
    shutil.copy(path, run_copy / "checkpoint.pt")
    res = json.loads((run_copy / "results.json").read_text())
    (run_copy / "results.json").write_text(json.dumps({**res, "status": "running"}))
    doors["resumed checkpoint.pt"] = ["run", "--resume", run_copy]
    export_copy = tmp_path / "export-me"
    shutil.copytree(finished_run[0], export_copy)
    shutil.copy(path, export_copy / "best.pt")
    doors["roli export"] = ["export", export_copy, tmp_path / "exported.pt"]
    # a RoLI run whose stage 1 (found by its key) holds the crafted file as best.pt
    from roli.training.pipeline import stage1_config, stage1_key

    recipe = ws.recipe({"transfer": {"init": "roli"}}, "roli")
    s1 = stage1_config(load_config(recipe))
    stage1 = ws.out / f"stage1-{stage1_key(s1)[:10]}"
    shutil.copytree(finished_run[0], stage1)
    shutil.copy(path, stage1 / "best.pt")
    res = json.loads((stage1 / "results.json").read_text())
    (stage1 / "results.json").write_text(json.dumps({**res, "stage1_key": stage1_key(s1)}))
    doors["RoLI stage-1 head"] = ["run", recipe, "--out", ws.out]

    for door, argv in doors.items():
        rc, err = cli(argv, capsys)
        assert rc == 2 and "weights_only=True" in err and "Traceback" not in err, (door, err)
        assert not marker.exists(), f"{door}: the payload ran"


def test_yaml_tags_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"train: {{epochs: {payload}}}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="not a valid value"):
        load_config(data={}, overrides=[f"train.epochs={payload}"])
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"recipe: {payload}\naxes: {{a: [1]}}\n")
    with pytest.raises(ConfigError, match="not a readable YAML grid"):
        load_grid(grid)
    assert not marker.exists()
    with pytest.raises(yaml.YAMLError):  # the loader is the safe one (the full loader would run os.system)
        yaml.safe_load(payload)


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("attempt", [
    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect_ex(("127.0.0.1", 9)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9)),
    lambda: socket.create_connection(("example.com", 80), timeout=1),
    lambda: socket.getaddrinfo("example.com", 443),
    lambda: socket.gethostbyname("example.com"),
    lambda: urllib.request.urlopen("http://example.com", timeout=1),
], ids=["connect", "connect_ex", "sendto", "create_connection", "getaddrinfo", "gethostbyname", "urlopen"])
def test_the_suite_cannot_reach_the_network(attempt):
    with pytest.raises((OSError, urllib.error.URLError)) as e:
        attempt()
    assert netguard.MESSAGE in str(e.value)


def test_local_ipc_still_works():
    a, b = socket.socketpair()  # what DataLoader workers and multiprocessing use
    with a, b:
        a.sendall(b"ok")
        assert b.recv(2) == b"ok"


def test_a_hub_request_fails_fast_without_touching_the_network():
    netguard.ATTEMPTS.clear()
    t0 = time.perf_counter()
    for cfg in (BackboneConfig(pretrained=True), BackboneConfig(checkpoint="hf-hub:timm/vit_base_patch16_224"),
                BackboneConfig(name="hf-hub:timm/vit_base_patch16_224"),
                BackboneConfig(name="vit_base_patch16_224", pretrained=True)):
        with pytest.raises(BackboneError, match="never downloads") as e:
            build_model(cfg, 10)
        assert "backbone.checkpoint" in str(e.value)  # says what to do instead
    assert time.perf_counter() - t0 < 5 and netguard.ATTEMPTS == []


def test_a_missing_known_checkpoint_file_is_not_downloaded(tmp_path):
    netguard.ATTEMPTS.clear()
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(BackboneConfig(name="vit_tiny_28", checkpoint=str(tmp_path / "weights.pth")), 10)
    assert netguard.ATTEMPTS == []


ENV_PROBE = """
import json, os, sys
before = dict(os.environ)
import roli, roli.cli.main
from roli.backbones import create_backbone
from roli.config import load_config
create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
create_backbone("test_vit", num_classes=3)
load_config(sys.argv[1])
import timm, huggingface_hub  # noqa: F401  (imported by roli's dependencies anyway)
after = dict(os.environ)
print(json.dumps({"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
                  "changed": sorted(k for k in before if k in after and before[k] != after[k])}))
"""


def test_importing_roli_and_building_backbones_leaves_the_environment_alone():
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "TIMM"))}
    env["PYTHONPATH"] = str(REPO / "src")
    out = subprocess.run([sys.executable, "-c", ENV_PROBE, str(REPO / "recipes" / "tiny" / "mnist_lora_roli.yaml")],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"added": [], "removed": [], "changed": []}


def test_a_run_leaves_the_environment_alone(fast_cfg, tmp_path):
    import os

    from roli.training.pipeline import run

    before = dict(os.environ)
    run(fast_cfg(["train.epochs=1", "run.deterministic=true"]), out=tmp_path, name="env")
    assert dict(os.environ) == before  # CUBLAS_WORKSPACE_CONFIG is set only inside a deterministic run
