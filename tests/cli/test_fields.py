"""`roli config`: every recipe field with its type, default and the schema's own comment as help."""

from __future__ import annotations

import dataclasses

import pytest

from roli.attacks import ATTACKS
from roli.cli.fields import comments, render, sections
from roli.cli.main import main
from roli.config import Config
from roli.transfer import TRANSFER


def _leaf_keys(prefix: str, obj) -> set[str]:
    out = set()
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out |= _leaf_keys(f"{prefix}.{f.name}", v) if dataclasses.is_dataclass(v) else {f"{prefix}.{f.name}"}
    return out


def test_every_field_of_every_section_is_listed_with_its_default():
    """Each leaf field of the default Config (attack and transfer: of every registered class) appears once."""
    found = sections()
    cfg = Config()
    for f in dataclasses.fields(cfg):
        if f.name in ("attack", "transfer"):
            continue
        assert {h.key for h in found[f.name]} == _leaf_keys(f.name, getattr(cfg, f.name)), f.name
    for reg, prefix in ((ATTACKS, "attack"), (TRANSFER, "transfer")):
        for name in reg.names():
            listed = {h.key: h.default for h in found[f"{prefix}.{name}"]}
            assert set(listed) == _leaf_keys(prefix, reg.get(name).config_cls()), name
    defaults = {h.key: h.default for h in found["train"]} | {h.key: h.default for h in found["threat"]}
    assert defaults["train.lr"] == "0.001" and defaults["threat.eps"] == "8/255" and defaults["train.grad_clip"] == "null"
    assert {h.key: h.default for h in found["transfer.lora"]}["transfer.alpha"] == "16"


def test_help_comes_from_the_schemas_comments():
    helps = {h.key: h.help for s in sections().values() for h in s}
    assert helps["train.momentum"] == "SGD only"  # a trailing comment
    assert helps["backbone.format"].startswith("How the checkpoint's keys map onto the timm architecture")  # above
    assert helps["stage1.lr"] == comments(type(Config().stage1)).get("lr", "")  # a subclass's comment wins, if any
    listed = sum(1 for s in sections().values() for h in s)
    helped = sum(1 for s in sections().values() for h in s if h.help)
    assert helped / listed > 0.6, f"{helped} of {listed} fields have help"  # the schema comments most fields


def test_one_section_and_the_command(capsys):
    assert main(["config", "transfer"]) == 0
    out = capsys.readouterr().out
    assert "transfer (name: lora):" in out and "transfer (name: vpt_deep):" in out and "train.lr" not in out
    assert "  transfer.rank" in out and "r: rank of each low-rank update" in out
    assert render("threat").splitlines()[0] == "threat:"


def test_an_unknown_section_is_one_line(capsys):
    assert main(["config", "trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config section 'trian'" in err[0] and "train" in err[0]


@pytest.mark.parametrize("section", ["backbone", "data", "threat", "train", "stage1", "eval", "run"])
def test_sections_of_the_recipe(section):
    assert render(section).startswith(f"{section}:\n")
