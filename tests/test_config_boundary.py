"""The config boundary (issue 26): each kind of bad recipe, `--set` or value is one ConfigError, raised once when the
recipe is loaded, that names the field, the value, the valid range and the fix. Every test here failed before."""

from __future__ import annotations

import textwrap

import pytest
import torch

from roli.config import SEED_RANGE, THREADS_MAX, ConfigError, load_config

RECIPE = {"data": {"name": "synthetic"}, "train": {"epochs": 1, "warmup_epochs": 0.0}}


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error(path=None, overrides=(), data=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=list(overrides), data=data)
    msg = str(info.value)
    assert "\n" not in msg.strip() or "not valid YAML" in msg, msg
    return msg


# --------------------------------------------------------------------------- duplicate keys


@pytest.mark.parametrize("text, key, lines", [
    ("train: {epochs: 2}\ntrain: {epochs: 3}\n", "'train'", "lines 1 and 2"),
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "'lr'", "lines 2 and 4"),
    ("eval:\n  attack:\n    steps: 1\n    steps: 2\n", "'steps'", "lines 3 and 4"),
    ("run: {seed: 1, seed: 1}\n", "'seed'", "lines 1 and 1"),
])
def test_a_key_given_twice_is_an_error_naming_key_and_file(tmp_path, text, key, lines):
    path = write(tmp_path, text)
    msg = error(path)
    assert str(path) in msg and f"key {key} is given twice" in msg and lines in msg and "keep one" in msg


def test_a_key_given_twice_in_a_base_file_names_the_base(tmp_path):
    base = write(tmp_path, "train:\n  lr: 0.1\n  lr: 0.2\n", "base.yaml")
    msg = error(write(tmp_path, "base: base.yaml\ntrain: {epochs: 1}\n"))
    assert msg.startswith(str(base)) and "'lr' is given twice" in msg


def test_merge_keys_and_the_keys_that_override_them_are_not_duplicates(tmp_path):
    path = write(tmp_path, """
        defaults: &d {epochs: 1, warmup_epochs: 0.0}
    """)
    assert "unknown key(s) ['defaults']" in error(path)  # the anchor itself is not a section
    path = write(tmp_path, "train:\n  <<: {epochs: 1, warmup_epochs: 0.0}\n  epochs: 2\n")
    assert load_config(path).train.epochs == 2


def test_a_key_given_twice_in_a_set_value_and_python_tags_are_errors(tmp_path):
    assert "'a' is given twice" in error(data=RECIPE, overrides=["eval.attack={a: 1, a: 2}"])
    path = write(tmp_path, "run: {seed: !!python/object/apply:os.system [id]}\n")
    assert "not valid YAML" in error(path) and "python/object/apply" in error(path)


# --------------------------------------------------------------------------- empty recipes


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null\n", "~\n", "---\n"])
def test_an_empty_recipe_file_names_the_minimal_recipe(tmp_path, text):
    msg = error(write(tmp_path, text))
    assert "the recipe is empty" in msg and "recipes/tiny/mnist_base.yaml" in msg and "transfer: {name: lora}" in msg


def test_an_empty_base_file_is_an_error_and_an_explicit_empty_mapping_is_not(tmp_path):
    base = write(tmp_path, "# nothing yet\n", "base.yaml")
    assert error(write(tmp_path, "base: base.yaml\n")).startswith(f"{base}: the recipe is empty")
    assert load_config(write(tmp_path, "{}\n", "defaults.yaml")) == load_config(data={})  # `{}`: all defaults


# --------------------------------------------------------------------------- --set


@pytest.mark.parametrize("item, fragments", [
    ("train.lr.x=1", ("train.lr is one value, not a section", "['x']", "`train.lr=VALUE`")),
    ("run.seed.y=2", ("run.seed is one value, not a section", "`run.seed=VALUE`")),
    ("train..lr=1", ("--set 'train..lr=1'", "an empty part in 'train..lr'", "expected section.key=value")),
    ("train.=1", ("an empty part in 'train.'",)),
    (".lr=1", ("an empty part in '.lr'",)),
    ("=3", ("--set '=3': an empty key", "e.g. train.epochs=3")),
    ("train.lr=", ("train.lr: expected a finite number", "got null (an empty value)")),
    ("eval=3", ("eval: expected a mapping of keys, got 3",)),
    ("run.name=2001-02-30", ("'2001-02-30' is not a valid value", "day is out of range", "quote it if it is text")),
    ("run.name=!!float abc", ("is not a valid value", "could not convert")),
    ("run.name=" + "[" * 600, ("is not a valid value", "nested too deeply")),
])
def test_bad_set_items_are_one_line_errors(item, fragments):
    msg = error(data=RECIPE, overrides=[item])
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_a_set_below_a_value_set_earlier_is_an_error():
    msg = error(data=RECIPE, overrides=["train=3", "train.lr=1"])
    assert "--set 'train.lr=1': an earlier --set gave train a value, so it has no key 'lr'" in msg
    assert load_config(data=RECIPE, overrides=["train.lr.x=1", "train.lr=0.5"]).train.lr == 0.5  # the last wins


# --------------------------------------------------------------------------- numbers and their ranges


@pytest.mark.parametrize("item, field", [
    (f"run.seed={2**64}", "run.seed: 18446744073709551616"), (f"train.epochs={10**30}", "train.epochs"),
    (f"data.classes=[1, {2**63}]", "data.classes[1]"), (f"attack.steps={10**400}", "attack.steps: an integer of "
                                                                                  "about 401 digits"),
    (f"eval.attack.restarts={-(2**63) - 1}", "eval.attack.restarts"),
])
def test_integers_beyond_64_bits_name_the_field_and_the_range(item, field):
    msg = error(data=RECIPE, overrides=[item])
    assert field in msg and "outside [-2**63, 2**63 - 1]" in msg and "give a smaller number" in msg


def test_an_integer_too_long_to_print_is_still_one_line():
    msg = error(data={**RECIPE, "run": {"seed": 10**5000}})
    assert "run.seed: an integer of about 5001 digits" in msg
    msg = error(data=RECIPE, overrides=["run.seed=" + "9" * 5000])
    assert "is not a valid value" in msg and "5000 digits" in msg and len(msg) < 400


def test_seed_range_is_the_real_bound():
    lo, hi = SEED_RANGE
    assert load_config(data=RECIPE, overrides=[f"run.seed={hi}"]).run.seed == hi
    assert load_config(data=RECIPE, overrides=[f"run.seed={lo}"]).run.seed == lo
    for seed in (hi + 1, lo - 1, 2**63 - 1):
        msg = error(data=RECIPE, overrides=[f"run.seed={seed}"])
        assert "seed must be in [-2**53, 2**53]" in msg and f"got {seed}" in msg and "choose a seed in that range" in msg
    # the bound is what the data order needs: seed * 1000 + epoch fits torch's generator at both ends ...
    torch.Generator().manual_seed(hi * 1000 + 2**62)
    torch.Generator().manual_seed(lo * 1000)
    with pytest.raises((RuntimeError, ValueError)):  # ... which refuses what 2**64 would give
        torch.manual_seed(2**64)


@pytest.mark.parametrize("item", [f"threat.eps={10**400}", f"train.lr={10**400}", "train.lr=1e400", "threat.eps=nan",
                                  "train.lr=-1e400/1"])
def test_floats_beyond_float_range_are_errors(item):
    msg = error(data=RECIPE, overrides=[item])
    assert item.split("=")[0] in msg and "expected a finite number" in msg


# --------------------------------------------------------------------------- impossible values


@pytest.mark.parametrize("item, fragment", [
    ("run.threads=0", "threads must be in [1, 2**31 - 1], or null for the number of cores; got 0"),
    ("run.threads=-2", "threads must be in [1, 2**31 - 1]"),
    (f"run.threads={THREADS_MAX + 1}", "threads must be in [1, 2**31 - 1]"),
    ("data.split_seed=-1", "split_seed must be >= 0"),
    ("backbone.key_map=[['a{4294967296}', x]]", "is not a valid regular expression"),
])
def test_impossible_values_name_the_field_and_the_fix(item, fragment):
    assert fragment in error(data=RECIPE, overrides=[item])


def test_threads_null_and_one_are_fine():
    assert load_config(data=RECIPE, overrides=["run.threads=1"]).run.threads == 1
    assert load_config(data=RECIPE, overrides=["run.threads=null"]).run.threads is None


@pytest.mark.parametrize("mean, std", [([0.5, 0.5, 0.5], [0.5]), ([0.5], [0.5, 0.5, 0.5]), ([], [])])
def test_mean_and_std_of_different_lengths_are_an_error(mean, std):
    msg = error(data={**RECIPE, "backbone": {"mean": mean, "std": std}})
    assert "mean and std need one value per input channel each" in msg and f"got {len(mean)} and {len(std)}" in msg


def test_bytes_are_not_a_list(tmp_path):
    path = write(tmp_path, "backbone: {mean: !!binary aGk=, std: !!binary aGk=}\n")
    assert "backbone.mean: expected a list" in error(path)


# --------------------------------------------------------------------------- what is not a recipe


@pytest.mark.parametrize("data", [[1, 2], "abc", 3])
def test_a_recipe_that_is_not_a_mapping(data):
    assert "config: a recipe must be a mapping of sections" in error(data=data)


@pytest.mark.parametrize("section", ["attack", "transfer"])
def test_a_name_that_is_not_a_string(section):
    msg = error(data={**RECIPE, section: {"name": [1]}})
    assert f"{section}.name: expected a string (a registered name), got [1]" in msg


@pytest.mark.parametrize("text, fragment", [
    ("run: {name: 2001-02-30}\n", "day is out of range for month"),
    ("train: {lr: !!float abc}\n", "could not convert string to float"),
    ("[" * 600 + "]" * 600, "nested too deeply"),
])
def test_yaml_that_cannot_be_built_is_not_valid_yaml(tmp_path, text, fragment):
    msg = error(write(tmp_path, text))
    assert "not valid YAML" in msg and fragment in msg


def test_aliases_that_never_end_or_expand_a_billion_times_are_errors(tmp_path):
    assert "an alias refers to a mapping or list that holds it" in error(write(tmp_path, "train: &t {lr: *t}\n"))
    laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
    assert "its aliases expand to more than 100000 values" in error(write(tmp_path, laughs + "run: {seed: *i}\n"))
    assert load_config(write(tmp_path, "train: &t {epochs: 1, warmup_epochs: 0.0}\nstage1: *t\n")).stage1.epochs == 1


@pytest.mark.parametrize("base", ["x" * 300, '"a\\0b"'])
def test_a_base_name_that_cannot_be_a_file(tmp_path, base):
    assert "cannot read the recipe" in error(write(tmp_path, f"base: {base}\n"))
