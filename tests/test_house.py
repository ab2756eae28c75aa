"""The house's measurable rules (scripts/house.py counts them): no import circle, no upward import between floors,
files under 400 lines (config.py, the one schema, excepted), functions at most 50 code lines (the training loop
excepted), and a docstring on every public name, with an `Example:` on the entry points."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("house", ROOT / "scripts" / "house.py")
house = importlib.util.module_from_spec(_spec)
sys.modules["house"] = house
_spec.loader.exec_module(house)

# Each package on its floor; a module may import its own floor or a lower one, never a higher one.
FLOORS = {
    0: ("roli", "roli.config", "roli.registry", "roli.errors", "roli.files", "roli.version", "roli.device",
        "roli.threat", "roli.numbers", "roli.checkpoints", "roli.precision", "roli.strict_yaml"),
    1: ("roli.backbones", "roli.data", "roli.attacks", "roli.objectives"),
    2: ("roli.transfer", "roli.distributed"),
    3: ("roli.evaluation",),
    4: ("roli.training",),
    5: ("roli.sweep", "roli.report"),
    6: ("roli.cli", "roli.__main__"),
}
LAZY_API = "roli"  # roli/__init__.py names the public API lazily (PEP 562); it imports nothing at import time
SIZE_EXEMPT = {"roli.config"}
LENGTH_EXEMPT = {"roli.training.loop:train_one_epoch"}


def floor(module: str) -> int:
    """The floor of a module: that of the longest package prefix listed in FLOORS."""
    best = max((p for ps in FLOORS.values() for p in ps if module == p or module.startswith(p + ".")), key=len)
    return next(f for f, ps in FLOORS.items() if best in ps)


def test_every_module_has_a_floor():
    assert all(floor(m) is not None for m in house.modules())


def test_no_import_circle():
    assert house.circles(house.import_graph()) == []


def test_no_upward_import():
    graph = house.import_graph()
    up = sorted(f"{a} (floor {floor(a)}) -> {b} (floor {floor(b)})" for a, targets in graph.items() if a != LAZY_API
                for b in targets if floor(b) > floor(a))
    assert not up, "\n".join(up)


def test_the_two_departments_stay_apart():
    """Measuring (evaluation) never imports presenting (report); report uses only evaluation's pure number functions
    (the ordering checks and expected robustness, neither of which imports torch)."""
    graph = house.import_graph()
    assert not [(a, b) for a, ts in graph.items() for b in ts if a.startswith("roli.evaluation") and
                b.startswith("roli.report")]
    assert {b for a, ts in graph.items() if a.startswith("roli.report") for b in ts
            if b.startswith("roli.evaluation")} <= {"roli.evaluation.ordering", "roli.evaluation.expected"}


def test_files_stay_under_400_lines():
    big = {m: n for m, n in house.file_sizes().items() if n > house.VERY_LONG_FILE and m not in SIZE_EXEMPT}
    assert not big, big


def test_functions_stay_under_50_code_lines():
    long = [f for f in house.long_functions() if f[0] not in LENGTH_EXEMPT]
    assert not long, long


def test_code_lines_counts_code_only():
    """The measure itself: docstring, comments and blank lines do not count."""
    import ast

    src = 'def f(x):\n    """Doc.\n\n    More.\n    """\n    # why\n\n    y = x\n    return y\n'
    node = ast.parse(src).body[0]
    assert house.code_lines(node, src.splitlines()) == 3


def test_every_public_name_has_a_docstring():
    missing = house.undocumented()
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)


def _entry_points():
    import roli
    from roli.attacks import ATTACKS
    from roli.backbones import BACKBONES
    from roli.data import DATASETS
    from roli.transfer import TRANSFER

    out = [(f"roli.{n}", getattr(roli, n)) for n in roli.__all__]
    for reg in (ATTACKS, TRANSFER, DATASETS, BACKBONES):
        out += [(f"{reg.kind} {n}", reg.get(n)) for n in reg.names()]
    return out


@pytest.mark.parametrize(("name", "obj"), _entry_points(), ids=lambda v: v if isinstance(v, str) else "")
def test_entry_points_have_a_docstring_with_an_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    assert "Example:" in doc or "Examples:" in doc, f"{name}: its docstring has no Example: section"
