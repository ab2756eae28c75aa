"""The ground floor (config, registry, version, device) imports nothing above it, and `import roli` stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "roli"
UPPER = ("roli.attacks", "roli.backbones", "roli.transfer", "roli.data", "roli.training", "roli.sweep", "roli.evaluation",
         "roli.report", "roli.cli")


def _roli_imports(path: Path) -> set[str]:
    """Every roli module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("roli"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("roli")}
    return found


GROUND = ["config.py", "registry.py", "version.py", "device.py", "threat.py", "errors.py", "files.py", "numbers.py",
          "checkpoints.py", "precision.py", "strict_yaml.py"]


@pytest.mark.parametrize("module", GROUND)
def test_ground_floor_imports_only_the_ground_floor(module):
    assert _roli_imports(SRC / module) <= {"roli." + m.removesuffix(".py") for m in GROUND}, module


def test_training_imports_nothing_from_the_sweep_above_it():
    """roli.sweep (many runs) stands on roli.training (one run), never the other way round."""
    found = {path.name: sorted(m for m in _roli_imports(path) if m == "roli.sweep" or m.startswith("roli.sweep."))
             for path in sorted((SRC / "training").rglob("*.py"))}
    assert found and not {k: v for k, v in found.items() if v}, found


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json\n"
                          "print(json.dumps(sorted(m for m in sys.modules if m.startswith('roli'))))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_roli_and_its_version_pull_in_nothing_above():
    loaded = _loaded_after("import roli; roli.__version__; from roli.version import versions; versions()")
    assert not [m for m in loaded if m.startswith(UPPER)], loaded


def test_config_loads_a_recipe_without_importing_the_packages_it_does_not_name():
    """Resolving `name: pgd` fills the attack registry (by package name, at run time), but config.py itself never
    imports training, evaluation or the CLI."""
    loaded = _loaded_after("from roli.config import load_config; load_config('recipes/tiny/mnist_lora_roli.yaml')")
    assert not [m for m in loaded if m.startswith(("roli.training", "roli.evaluation", "roli.cli"))], loaded


def test_public_api_resolves_lazily():
    import roli

    assert callable(roli.run) and callable(roli.make_attack) and roli.make_attack(eps=0.1).threat.eps == 0.1
    assert set(roli.__all__) <= set(dir(roli))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        roli.nope  # noqa: B018


def test_all_lists_exactly_the_lazy_api():
    import roli

    assert roli.__all__ == sorted(roli._API)
