"""Bad input never reaches a traceback (issue 26), as a property: for any recipe (a dict, or YAML text in a file, with
`base:` files) and any `--set` list, `roli.config.load_config` returns a Config or raises ConfigError; any other
exception is a counterexample. A recipe it accepts dumps and loads back to the same Config. Recipes it rejects also
go through `roli run` in-process: exit code 2, one line on stderr, no traceback, nothing made under --out (only
rejected recipes reach the CLI, so no generated case ever trains).

The strategies mix the schema's own section and field names, registered method/attack names and choices with junk:
wrong types, huge/negative/non-finite numbers (also as strings: "1e400", "nan", "8/0"), unicode, empty strings,
nested junk, lists where scalars belong; the YAML texts add duplicate keys, tags, bad dates, deep nesting, empty
files and broken `base:` chains. Runs are derandomized (the same examples every run, no example database); set
ROLI_HYPOTHESIS=explore to search afresh with a database under tests/reliability/.hypothesis-db (git-ignored).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from reliability.bad_inputs import message, run_argv
from roli.config import SEED_RANGE, THREADS_MAX, Config, ConfigError, load_config, to_dict
from roli.errors import one_line
from roli.registry import ATTACKS, TRANSFER

pytestmark = pytest.mark.usefixtures("one_thread")

EXPLORE = os.environ.get("ROLI_HYPOTHESIS") == "explore"
COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
if EXPLORE:
    COMMON["database"] = DirectoryBasedExampleDatabase(Path(__file__).parent / ".hypothesis-db")
else:
    COMMON["derandomize"] = True  # implies database=None: every run tests the same examples
DICT_EXAMPLES, FILE_EXAMPLES, CLI_CASES = 1500, 500, 60


# --------------------------------------------------------------------------- the schema's names, and junk


def _field_names(*classes: type) -> list[str]:
    return sorted({f.name for cls in classes for f in dataclasses.fields(cls)})


def _section_fields() -> dict[str, list[str]]:
    hints = typing.get_type_hints(Config)
    out = {name: _field_names(tp) for name, tp in hints.items()}
    out["attack"] = _field_names(*(ATTACKS.get(n).config_cls for n in ATTACKS.names()))
    out["transfer"] = _field_names(*(TRANSFER.get(n).config_cls for n in TRANSFER.names()))
    out["eval"] = sorted({*out["eval"], *(f"attack.{k}" for k in out["attack"])})
    return out


FIELDS = _section_fields()
SECTIONS = sorted(FIELDS)
CHOICES = [*ATTACKS.names(), *TRANSFER.names(), "linf", "l2", "ranli", "roli", "paper", "torch", "sgd", "adamw",
           "fp32", "bf16", "fp16", "stop", "skip", "best", "last", "robust", "clean", "auto", "cpu", "custom",
           "standard", "q", "k", "v", "apgd-ce", "apgd-t", "vit_tiny_28", "synthetic", "mnist"]
HUGE = [-1, 0, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1, 10**400, -(10**400)]
NUMBER_STRINGS = ["1e400", "-1e400", "nan", "NaN", "inf", "-inf", ".inf", "8/0", "0/0", "1/0.0", "8/255", "1e-3",
                  "1e5000/1", "", " ", "0x10", "1_000", "٣", "½", "1,5", "8//255", "2**64", str(2**64), "−1", "١e3"]
# `--set` values, read as YAML: syntax errors, tags, impossible dates, deep nesting, aliases, duplicate keys
RAW_VALUES = ["", "1", "-1", "0", "3.5", "1e400", "nan", ".nan", "-.inf", "8/0", "8/255", "[1,", "{a: 1, a: 2}",
              "!!python/object/apply:os.system [id]", "!!float abc", "!!int 0x", "2001-13-45", "2001-02-30",
              "!!timestamp 2001-01-01", "!!binary aGk=", "!!set {a}", "&a [*a]", "&a {x: *a}", "[" * 600, "null",
              "~", "[1, 2, 3]", "[]", "{}", "{lr: 1}", str(2**64), str(10**30), "1" * 5000, "true", "yes", "é",
              "'quoted'", "a\nb", "[[[[1]]]]", "{name: lora, rank: 0}", "-", "=", "..", "!custom x"]

# values for list fields (key_map, mean/std, classes, betas, targets, attacks)
LISTS = [[], [[]], [["a{4294967296}", "x"]], [["(", "x"]], [["a", "b", "c"]], [1, 2, 3], [0.5], [1, 1], [-1, 2],
         [2**64, 1], ["q", "q"], ["apgd-ce", "nope"], [0.9, 1.0], [[1, 2], [3]], "abc", b"hi"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE), st.floats(), st.sampled_from(NUMBER_STRINGS),
    st.text(max_size=8), st.sampled_from(CHOICES), st.sampled_from(LISTS))
junk_keys = st.one_of(st.sampled_from([n for names in FIELDS.values() for n in names]), st.sampled_from(SECTIONS),
                      st.text(max_size=6), st.integers(-2, 2), st.none(), st.booleans())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(junk_keys, inner,
                                                                                            max_size=3), max_leaves=6)


def _section_types() -> dict[str, dict[str, object]]:
    """section -> field -> type hint (an attack's or method's field: from a registered config class that has it)."""
    out = {name: typing.get_type_hints(tp) for name, tp in typing.get_type_hints(Config).items()}
    for section, registry in (("attack", ATTACKS), ("transfer", TRANSFER)):
        for name in registry.names():
            out[section] = {**typing.get_type_hints(registry.get(name).config_cls), **out[section]}
    out["eval"] = {**out["eval"], **{f"attack.{k}": tp for k, tp in out["attack"].items()}}
    return out


TYPES = _section_types()
EDGE_INTS = [*SEED_RANGE, SEED_RANGE[1] + 1, THREADS_MAX, THREADS_MAX + 1, 2**63 - 1, 2**63, -(2**63), -1, 0, 1]
EDGE_FLOATS = [0.0, -0.0, 1.0, 8 / 255, 1e-8, 0.999, 2.0, 1e308, "8/255", "1e-3", "2/255"]


def typed(tp: object) -> st.SearchStrategy:
    """Values of the field's own type, edges included (so that many recipes are accepted and checked further)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else typed(a) for a in args))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is tuple:
        return st.lists(typed(args[0]), max_size=4) if args[-1] is Ellipsis else st.tuples(*map(typed, args)).map(list)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-2, 12) | st.sampled_from(EDGE_INTS)
    if tp is float:
        return st.floats(0, 1) | st.sampled_from(EDGE_FLOATS)
    if tp is str:
        return st.sampled_from(CHOICES) | st.text(max_size=6)
    return values  # a whole attack section (eval.attack): junk


@st.composite
def mutations(draw) -> tuple[str, str, object]:
    """(section, field, value): the schema's own names (junk 1 in 8 each), with a value of the field's type (2 in 3)
    or junk."""
    section = draw(st.text(max_size=5) if draw(st.integers(0, 7)) == 0 else st.sampled_from(SECTIONS))
    names = FIELDS.get(section, [])
    name = draw(st.sampled_from(names) if names and draw(st.integers(0, 7)) else st.text(max_size=5))
    hint = TYPES.get(section, {}).get(name)
    if name == "name":
        value = draw(st.sampled_from(CHOICES))
    else:
        value = draw(typed(hint) if hint is not None and draw(st.integers(0, 2)) else values)
    return section, name, value


def _apply(recipe: dict, section: str, name: str, value: object) -> dict:
    node = recipe.setdefault(section, {})
    if not isinstance(node, dict):
        recipe[section] = node = {}
    *parents, leaf = name.split(".") if name else [name]
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
    node[leaf] = value
    return recipe


@st.composite
def recipes(draw) -> object:
    """A recipe dict: a valid tiny one with 1-3 mutated fields (8 in 10), a dict of junk, or not a mapping."""
    kind = draw(st.sampled_from(["mutated"] * 8 + ["junk", "top"]))
    if kind == "junk":
        return draw(st.dictionaries(st.sampled_from(SECTIONS) | junk_keys, values, max_size=4))
    if kind == "top":
        return draw(values)
    recipe = {"data": {"name": "synthetic"}, "train": {"epochs": 1, "warmup_epochs": 0.0}, "run": {"threads": 1}}
    for section, name, value in draw(st.lists(mutations(), min_size=1, max_size=3)):
        recipe = _apply(recipe, section, name, value)
    return recipe


KNOWN_KEYS = [f"{s}.{f}" for s in SECTIONS for f in FIELDS[s]]


@st.composite
def override(draw) -> str:
    """One `--set` item: mostly a known `section.field`, else a dotted key of known and junk parts (empty parts
    included), with a raw value; sometimes without `=` or without a key."""
    if draw(st.integers(0, 3)):
        key = draw(st.sampled_from(KNOWN_KEYS) | st.sampled_from(SECTIONS)) + draw(st.sampled_from(["", "", ".x"]))
    else:
        key = ".".join(draw(st.lists(st.sampled_from(SECTIONS) | st.sampled_from(["", "x", "name", " lr "]) |
                                     st.text(max_size=4), min_size=1, max_size=4)))
    hint = TYPES.get(key.partition(".")[0], {}).get(key.partition(".")[2])
    if hint is not None and draw(st.booleans()):
        raw = json.dumps(draw(typed(hint)))  # JSON is YAML
    else:
        raw = draw(st.sampled_from(RAW_VALUES) | st.sampled_from(NUMBER_STRINGS) | st.sampled_from(CHOICES) |
                   st.integers().map(str) | st.text(max_size=6))
    return draw(st.sampled_from([f"{key}={raw}", f"{key}={raw}", f"{key}={raw}", key, f"={raw}", f"{key}="]))


overrides = st.lists(override(), max_size=2)


# --------------------------------------------------------------------------- the property


def accepts_or_config_error(load, **kwargs) -> Config | ConfigError:
    """The property: `load(**kwargs)` returns a Config (that round-trips, and whose seeds torch and numpy take) or
    raises a ConfigError with a message; any other exception propagates (the counterexample)."""
    try:
        cfg = load(**kwargs)
    except ConfigError as e:
        assert one_line(e), "a ConfigError without a message"
        return e
    assert isinstance(cfg, Config)
    assert load_config(data=to_dict(cfg)) == cfg, "an accepted config does not load back from its dump"
    torch.Generator().manual_seed(cfg.run.seed * 1000 + cfg.train.epochs)  # how the data order is seeded
    np.random.default_rng([cfg.data.split_seed, 1])  # how the splits are carved
    return cfg


@settings(max_examples=DICT_EXAMPLES, **COMMON)
@given(recipe=recipes(), sets=overrides)
def test_any_recipe_dict_and_overrides_give_a_config_or_a_config_error(recipe, sets):
    accepts_or_config_error(load_config, data=recipe, overrides=sets)


# --------------------------------------------------------------------------- YAML text, by path, and the CLI

DUPLICATE = ["train:\n  lr: 0.1\n  lr: 0.2\n", "train: {epochs: 1}\ntrain: {epochs: 2}\n",
             "eval:\n  attack:\n    steps: 1\n    steps: 2\n", "{a: 1, a: 2}\n", "run: {seed: 1, seed: 1}\n"]
TAGS = ["run: {seed: !!python/object/apply:os.system [id]}\n", "run: {name: !!binary aGk=}\n", "!custom {a: 1}\n",
        "run: {name: !!timestamp 2001-13-45}\n", "run: {name: 2001-02-30}\n", "train: {lr: !!float abc}\n",
        "data: {classes: !!set {1, 2}}\n", "backbone: {mean: !!binary aGk=, std: !!binary aGk=}\n"]
ODD = ["", "# only a comment\n", "null\n", "~\n", "---\n", "{}\n", "[\n", "- a\n", "3\n", "[" * 600 + "]" * 600,
       "a: &a [*a]\n", "train: &t {lr: *t}\n", "train:\n\tlr: 1\n", "\ufeffrun: {seed: 1}\n", "run: {seed: 0x10}\n",
       "run: {seed: " + "9" * 5000 + "}\n", "<<: {run: {seed: 1}}\nrun: {seed: 2}\n"]
BASES = ["base: base.yaml\n", "base: [base.yaml, base.yaml]\n", "base: recipe.yaml\n", "base: 3\n", "base: [1]\n",
         "base: {a: 1}\n", "base: nope.yaml\n", "base: \"\\0\"\n", "base: ''\n", "base: []\n", "base: " + "x" * 300 + "\n"]


def _dump(recipe: object) -> str:
    try:
        return yaml.safe_dump(recipe)
    except yaml.YAMLError:
        return "{}\n"


texts = st.one_of(recipes().map(_dump), st.sampled_from(DUPLICATE + TAGS + ODD), st.text(max_size=40))


@st.composite
def recipe_files(draw) -> tuple[str, str | None]:
    """(recipe text, base text or None): most recipes stand alone; some name a `base:` file, itself junk or not."""
    text = draw(texts)
    if not draw(st.booleans()):
        return text, None
    head = draw(st.sampled_from(BASES))
    body = "" if text.lstrip().startswith(("-", "[", "base")) or not text.strip() else text
    return head + body, draw(texts)


_cli_calls = [0]


def _check_cli(recipe: Path, sets: list[str], root: Path) -> None:
    """`roli run RECIPE --out OUT --set ...` of a recipe that load_config rejected: exit 2, one line, nothing made."""
    if _cli_calls[0] >= CLI_CASES or any("=" not in s or s.startswith("-") for s in sets):
        return  # a --set item without `=` or starting with `-` is argparse's to judge (its usage text)
    _cli_calls[0] += 1
    out = root / "runs"
    rc, err = run_argv(["run", recipe, "--out", out, *(["--set", *sets] if sets else [])])
    assert rc == 2 and "Traceback" not in err and len(message(err)) == 1, err
    assert not out.exists(), "a rejected recipe made something under --out"


@settings(max_examples=FILE_EXAMPLES, **COMMON)
@given(files=recipe_files(), sets=overrides)
def test_any_recipe_file_gives_a_config_or_a_config_error_and_the_cli_one_line(files, sets):
    text, base = files
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = root / "recipe.yaml"
        recipe.write_text(text, encoding="utf-8")
        if base is not None:
            (root / "base.yaml").write_text(base, encoding="utf-8")
        result = accepts_or_config_error(load_config, path=recipe, overrides=sets)
        if isinstance(result, ConfigError):
            _check_cli(recipe, sets, root)


# --------------------------------------------------------------------------- the property can fail


def _values_of(node: object):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _values_of(v)
    elif isinstance(node, list):
        for v in node:
            yield from _values_of(v)


def test_the_property_finds_a_planted_bug():
    """A loader that crashes (TypeError) on one input class, an integer beyond 64 bits anywhere in the recipe (the
    class behind `run.seed: 2**64` before issue 26), is caught by the same strategies and reported."""
    found = []

    def planted(data, overrides):
        if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**64 for v in _values_of(data)):
            found.append(data)
            raise TypeError("planted: an integer beyond 64 bits")
        return load_config(data=data, overrides=overrides)

    @settings(max_examples=DICT_EXAMPLES, **COMMON)
    @given(recipe=recipes(), sets=overrides)
    def check(recipe, sets):
        accepts_or_config_error(planted, data=recipe, overrides=sets)

    with pytest.raises(TypeError, match="planted"):
        check()
    assert found
