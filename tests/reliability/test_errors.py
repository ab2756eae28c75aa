"""One error type (docs/reliability.md, guarantee 5): every error roli raises for a user mistake derives from
roli.errors.RoliError and still from its builtin base, importable from where it always was; the CLI prints it as one
line, and anything else is a bug that keeps its traceback (test_faults.py)."""

from __future__ import annotations

import importlib

import pytest

from roli import errors
from roli.errors import RoliError, one_line

# (where it was defined before roli.errors, class, its builtin base)
OLD_HOMES = [
    ("roli.config", "ConfigError", ValueError),
    ("roli.backbones", "BackboneError", ValueError),
    ("roli.backbones.factory", "BackboneError", ValueError),
    ("roli.checkpoints", "CheckpointError", ValueError),
    ("roli.data", "DataError", ValueError),
    ("roli.data.base", "DataError", ValueError),
    ("roli.transfer.heads", "HeadError", ValueError),
    ("roli.transfer.base", "UnsupportedBackbone", ValueError),
    ("roli.training.pipeline", "RunDirError", FileExistsError),
    ("roli.training.trainer", "TrainingFailed", RuntimeError),
    ("roli.evaluation.autoattack", "StateMismatch", ValueError),
    ("roli.device", "DeviceError", RuntimeError),
]


@pytest.mark.parametrize("module, name, base", OLD_HOMES, ids=[f"{m}.{n}" for m, n, _ in OLD_HOMES])
def test_existing_errors_are_roli_errors_and_keep_their_builtin_base(module, name, base):
    cls = getattr(importlib.import_module(module), name)
    assert cls is getattr(errors, name)  # one class, re-exported where it always was
    assert issubclass(cls, RoliError) and issubclass(cls, base)


def test_every_error_class_is_a_roli_error():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BaseException)]
    assert len(classes) >= 16 and all(issubclass(c, RoliError) for c in classes)


def test_an_unknown_name_is_a_key_error_with_a_readable_message():
    from roli.registry import ATTACKS

    with pytest.raises(KeyError) as e:
        ATTACKS.get("cw")
    assert isinstance(e.value, RoliError)
    assert str(e.value) == "unknown attack 'cw'; choose one of ['autoattack', 'fgsm', 'fgsm_rs', 'nfgsm', 'pgd']"  # not quoted


def test_one_line_keeps_only_the_message_of_a_dataloader_worker_error():
    worker = errors.DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                              "call last):\n  File \"x.py\", line 1, in f\n    raise DataError(...)\n"
                              "roli.errors.DataError: /data/cat/1.jpg: cannot read the image (OSError: truncated)\n")
    assert one_line(worker) == "/data/cat/1.jpg: cannot read the image (OSError: truncated) (in a DataLoader worker)"
    assert one_line(errors.ConfigError("a\n  b")) == "a b"


def test_the_cli_has_no_catch_all_key_error():
    import ast
    from pathlib import Path

    import roli.cli.main as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    caught = [ast.unparse(h.type) for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler) and h.type is not None]
    assert not [c for c in caught if "KeyError" in c], caught
