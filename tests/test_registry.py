"""roli.registry: name -> object registries used for attacks, backbones, datasets, norms and transfer methods."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from roli.registry import Registry


def make_registry() -> Registry:
    reg: Registry = Registry("widget")
    reg.register("beta")(int)
    reg.register("alpha")(str)
    return reg


def test_register_returns_object_and_get_finds_it():
    reg = make_registry()

    @reg.register("gamma")
    def gamma():
        return 3

    assert gamma() == 3  # the decorator hands the object back unchanged
    assert reg.get("gamma") is gamma
    assert reg.get("alpha") is str


def test_duplicate_registration_is_a_key_error_and_keeps_the_first():
    reg = make_registry()
    with pytest.raises(KeyError, match=r"widget 'alpha' is registered twice"):
        reg.register("alpha")(float)
    assert reg.get("alpha") is str  # the original entry is not overwritten
    assert reg.names() == ["alpha", "beta"]


def test_unknown_name_error_lists_choices():
    reg = make_registry()
    with pytest.raises(KeyError) as info:
        reg.get("delta")
    msg = info.value.args[0]
    assert "unknown widget 'delta'" in msg
    assert "['alpha', 'beta']" in msg


def test_names_sorted_contains_and_iter():
    reg = make_registry()
    assert reg.names() == ["alpha", "beta"]
    assert list(reg) == ["alpha", "beta"]
    assert "alpha" in reg and "delta" not in reg


def test_registries_are_independent():
    a, b = Registry("a"), Registry("b")
    a.register("x")(1)
    assert "x" in a and "x" not in b
    b.register("x")(2)  # the same name in another registry is not a duplicate
    assert a.get("x") == 1 and b.get("x") == 2


def test_package_registries_hold_the_shipped_entries():
    from roli.attacks import ATTACKS
    from roli.backbones import BACKBONES
    from roli.data import DATASETS
    from roli.threat import BALLS
    from roli.transfer import TRANSFER

    assert {"pgd", "fgsm"} <= set(ATTACKS.names())
    assert {"vit_tiny_28", "vit_tiny_28_fmnist_robust", "vit_tiny_28_fmnist_standard"} <= set(BACKBONES.names())
    assert {"mnist", "fashion_mnist", "synthetic"} <= set(DATASETS.names())
    assert BALLS.names() == ["l2", "linf"]
    assert {"linear_probe", "full_finetune"} <= set(TRANSFER.names())


# --------------------------------------------------------------------------- plugins


PLUGIN = Path(__file__).parent / "plugin_demo"  # a package + its *.dist-info, as pip would install them


def _with_plugin(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_an_installed_plugin_registers_a_method_and_an_attack_without_editing_roli():
    out = _with_plugin("from roli.cli.main import main; main(['list'])")
    assert out.returncode == 0, out.stderr
    assert "demo_norm_tune: init" in out.stdout and "include_head: bool = True" in out.stdout
    assert "demo_fgsm*: loss" in out.stdout  # a trainable attack, with its own config class


def test_a_plugin_method_trains_through_the_normal_config_path():
    code = ("from roli.config import load_config; from roli.backbones import build_model; "
            "from roli.transfer import build_transfer; "
            "cfg = load_config(data={'transfer': {'name': 'demo_norm_tune', 'include_head': False}}); "
            "m = build_transfer(cfg.transfer).apply(build_model(cfg.backbone, 3)); "
            "print(sorted({n.split('.')[-2] for n, p in m.named_parameters() if p.requires_grad}))")
    out = _with_plugin(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['head', 'norm', 'norm1', 'norm2']"


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "bad-0.1.dist-info").mkdir()
    (tmp_path / "bad-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: bad\nVersion: 0.1\n")
    (tmp_path / "bad-0.1.dist-info" / "entry_points.txt").write_text("[roli.plugins]\nbad = no_such_module\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "from roli.registry import ATTACKS; print(ATTACKS.names())"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "pgd" in out.stdout
    assert "roli plugin 'bad' (no_such_module) failed to load and is skipped" in out.stderr
