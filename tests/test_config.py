"""roli.config: strict YAML loading, type checks, value checks, --set overrides, includes, dump and hash."""

from __future__ import annotations

import dataclasses
import re
import textwrap

import pytest

from roli.config import (
    Config,
    ConfigError,
    TrainConfig,
    config_hash,
    dump_config,
    from_dict,
    load_config,
    parse_overrides,
    upgrade,
)


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=list(overrides))
    return str(info.value)


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = write(tmp_path, """
        train:
          epochs: 2
          epocs: 3
    """)
    msg = load_error(path)
    assert str(path) in msg
    assert "epocs" in msg
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    assert f"valid keys are {valid}" in msg


def test_unknown_top_level_section(tmp_path):
    path = write(tmp_path, "trian: {epochs: 2}\n")
    msg = load_error(path)
    assert str(path) in msg and "'trian'" in msg
    for section in ("backbone", "data", "attack", "transfer", "train", "stage1", "eval", "run"):
        assert f"'{section}'" in msg


def test_section_must_be_a_mapping(tmp_path):
    msg = load_error(write(tmp_path, "train: 3\n"))
    assert "train" in msg and "mapping" in msg


def test_recipe_must_be_a_mapping_and_exist(tmp_path):
    assert "mapping" in load_error(write(tmp_path, "- a\n- b\n"))
    missing = tmp_path / "nope.yaml"
    msg = load_error(missing)
    assert str(missing) in msg and "not found" in msg
    assert "not valid YAML" in load_error(write(tmp_path, "train: {epochs: [1, \n"))


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    "yaml_text, key, expected",
    [
        ('train: {epochs: "3"}', "train.epochs", "expected an integer"),
        ("train: {epochs: 3.0}", "train.epochs", "expected an integer"),
        ("train: {epochs: true}", "train.epochs", "expected an integer"),  # bool is not an int here
        ("run: {deterministic: 1}", "run.deterministic", "expected true or false"),
        ('run: {deterministic: "yes please"}', "run.deterministic", "expected true or false"),
        ("train: {lr: true}", "train.lr", "number (or a fraction like 8/255)"),
        ("train: {lr: fast}", "train.lr", "number (or a fraction like 8/255)"),
        ("train: {lr: .inf}", "train.lr", "expected a finite number"),
        ("threat: {eps: .nan}", "threat.eps", "expected a finite number"),
        ("data: {name: 3}", "data.name", "expected a string"),
        ("train: {betas: 0.9}", "train.betas", "expected a list"),
        ("train: {betas: [0.9, 0.99, 0.999]}", "train.betas", "expected 2 values"),
        ("backbone: {mean: [0.5, x], std: [1, 1]}", "backbone.mean[1]", "number (or a fraction like 8/255)"),
        ('data: {train_limit: "10"}', "data.train_limit", "expected an integer"),
    ],
)
def test_wrong_types_are_errors(tmp_path, yaml_text, key, expected):
    path = write(tmp_path, yaml_text + "\n")
    msg = load_error(path)
    assert str(path) in msg
    assert f"{key}: " in msg
    assert expected in msg


def test_int_is_accepted_for_float_and_becomes_float(tmp_path):
    cfg = load_config(write(tmp_path, "train: {lr: 1, warmup_epochs: 0}\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.warmup_epochs == 0.0 and isinstance(cfg.train.warmup_epochs, float)


def test_optional_fields_accept_null_and_values(tmp_path):
    cfg = load_config(write(tmp_path, "train: {grad_clip: 2}\ndata: {train_limit: null, test_limit: 5}\n"))
    assert cfg.train.grad_clip == 2.0
    assert cfg.data.train_limit is None and cfg.data.test_limit == 5
    assert cfg.train.betas == (0.9, 0.999) and isinstance(cfg.train.betas, tuple)


def test_exponent_notation_floats_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as the string '1e-3'; it must still be accepted as a number."""
    cfg = load_config(write(tmp_path, "train: {lr: 1e-3, adam_eps: 1e-8}\n"), overrides=["threat.eps=5e-2"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.adam_eps == pytest.approx(1e-8)
    assert cfg.threat.eps == pytest.approx(5e-2)


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=1e999", "train.grad_clip=Infinity",
                                      "backbone.mean=[nan]"])
def test_non_finite_number_strings_are_errors(override):
    with pytest.raises(ConfigError, match="finite"):
        load_config(data={"backbone": {"mean": [0.5], "std": [1.0]}}, overrides=[override])


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("threat: {eps: -0.1}", "eps must be >= 0"),
        ("attack: {steps: 0}", "steps must be >= 1"),
        ("attack: {step_size: 0}", "step_size must be > 0"),
        ("attack: {restarts: 0}", "restarts must be >= 1"),
        ("train: {lr: 0}", "lr must be > 0"),
        ("train: {lr: -0.001}", "lr must be > 0"),
        ("train: {epochs: 2, warmup_epochs: 3}", "warmup_epochs must be in [0, epochs]"),
        ("train: {epochs: 0}", "epochs must be >= 1"),
        ("stage1: {epochs: 1, warmup_epochs: 2}", "warmup_epochs must be in [0, epochs]"),
        ("data: {val_fraction: 1.0}", "val_fraction must be in (0, 1)"),
        ("data: {batch_size: 0}", "batch sizes must be >= 1"),
        ("data: {train_limit: 0}", "train_limit must be >= 1"),
        ("backbone: {drop_rate: 1.0}", "drop_rate must be in [0, 1)"),
        ("backbone: {mean: [0.5]}", "give both mean and std"),
        ("backbone: {mean: [0.5], std: [0.0]}", "std must be > 0"),
        ("eval: {attack: {steps: 0}}", "steps must be >= 1"),
        ("threat: {eps: 8}", "did you mean 8/255?"),
        ("backbone: {proj_drop_rate: 1.0}", "proj_drop_rate must be in [0, 1)"),
    ],
)
def test_impossible_values_are_errors(tmp_path, yaml_text, fragment):
    path = write(tmp_path, yaml_text + "\n")
    msg = load_error(path)
    assert str(path) in msg
    assert fragment in msg
    section = yaml_text.split(":")[0]
    assert f"{section}: " in msg or f"{section}." in msg  # the section is named


def test_eps_fraction_parses(tmp_path):
    cfg = load_config(write(tmp_path, "threat: {eps: 8/255}\nattack: {step_size: 2 / 255}\n"))
    assert cfg.threat.eps == 8 / 255
    assert cfg.attack.step_size == 2 / 255


def test_fraction_by_zero_is_an_error(tmp_path):
    assert "threat.eps" in load_error(write(tmp_path, "threat: {eps: 8/0}\n"))


def test_literal_choice_error_lists_choices(tmp_path):
    msg = load_error(write(tmp_path, "threat: {norm: l1}\n"))
    assert "threat.norm" in msg and "'l1'" in msg
    assert "['linf', 'l2']" in msg
    msg = load_error(write(tmp_path, "train: {optimizer: adam}\n"))
    assert "['sgd', 'adamw']" in msg


def test_unknown_transfer_lists_registered_methods(tmp_path):
    from roli.transfer import TRANSFER

    msg = load_error(write(tmp_path, "transfer: {name: lora_magic}\n"))
    assert "transfer.name" in msg and "'lora_magic'" in msg
    assert str(TRANSFER.names()) in msg
    assert "linear_probe" in msg and "full_finetune" in msg


def test_unknown_attack_lists_registered_attacks(tmp_path):
    msg = load_error(write(tmp_path, "attack: {name: cw}\n"))
    assert "attack.name" in msg and "'cw'" in msg and "fgsm" in msg and "pgd" in msg


# --------------------------------------------------------------------------- overrides


def test_overrides_are_applied(tmp_path):
    path = write(tmp_path, "train: {epochs: 2, lr: 0.1}\nthreat: {eps: 0.1}\n")
    cfg = load_config(path, overrides=["train.epochs=7", "threat.eps=8/255", "run.deterministic=true",
                                       "data.name=fashion_mnist", "data.train_limit=null"])
    assert cfg.train.epochs == 7
    assert cfg.train.lr == 0.1  # untouched keys of the same section survive
    assert cfg.threat.eps == 8 / 255
    assert cfg.run.deterministic is True
    assert cfg.data.name == "fashion_mnist"
    assert cfg.data.train_limit is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=three", "train.epochs: expected an integer"),
        ("train.epochs='3'", "train.epochs: expected an integer"),
        ("run.deterministic=1", "run.deterministic: expected true or false"),
        ("threat.eps=-1", "eps must be >= 0"),
        ("threat.norm=l3", "['linf', 'l2']"),
        ("train.epocs=3", "'epocs'"),
        ("train.epochs=1", "warmup_epochs must be in [0, epochs]"),  # file has warmup 1.5
    ],
)
def test_overrides_are_type_checked(tmp_path, override, fragment):
    path = write(tmp_path, "train: {epochs: 3, warmup_epochs: 1.5}\n")
    msg = load_error(path, [override])
    assert msg.startswith("--set")
    assert fragment in msg


def test_override_syntax_errors():
    for bad in ("train.epochs", "=3"):
        with pytest.raises(ConfigError, match="section.key=value"):
            parse_overrides([bad])
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1, "d": "x"}}, "e": [1, 2]}


def test_overrides_with_data_dict(tiny_cfg):
    cfg = tiny_cfg(["attack.steps=4"])
    assert cfg.attack.steps == 4
    assert cfg.threat.eps == 0.1 and cfg.attack.step_size == 0.05  # the rest of the section is kept
    assert tiny_cfg().attack.steps == 2  # the recipe dict itself is not mutated by the override


# --------------------------------------------------------------------------- base includes


def test_base_include_merges_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, """
        data: {name: fashion_mnist, batch_size: 32}
        train: {epochs: 4, lr: 0.2, warmup_epochs: 1}
        threat: {eps: 8/255}
    """, "grand.yaml")
    write(tmp_path, """
        base: ../grand.yaml
        train: {lr: 0.05}
        run: {seed: 3}
    """, "sub/base.yaml")
    child = write(tmp_path, """
        base: base.yaml
        train: {epochs: 6}
        data: {batch_size: 16}
    """, "sub/child.yaml")
    cfg = load_config(child)
    assert cfg.train.epochs == 6  # child wins
    assert cfg.train.lr == 0.05  # middle wins over grandparent
    assert cfg.train.warmup_epochs == 1.0  # grandparent value kept (deep merge, not section replace)
    assert cfg.data.name == "fashion_mnist" and cfg.data.batch_size == 16
    assert cfg.threat.eps == 8 / 255
    assert cfg.run.seed == 3


def test_a_child_recipe_that_names_another_attack_replaces_the_section(tmp_path):
    """As with --set: PGD's steps would not fit FGSM-RS, so a new attack name starts the section afresh; the same
    name merges field by field."""
    (tmp_path / "base.yaml").write_text("attack: {name: pgd, steps: 5, step_size: 0.05, select: last}\n"
                                        "eval: {attack: {name: pgd, steps: 10, step_size: 0.025}}\n")
    (tmp_path / "cheap.yaml").write_text("base: base.yaml\nattack: {name: fgsm_rs, step: 1.0}\n")
    (tmp_path / "more.yaml").write_text("base: base.yaml\nattack: {steps: 2}\n")
    cheap = load_config(tmp_path / "cheap.yaml")
    assert cheap.attack.name == "fgsm_rs" and cheap.attack.step == 1.0 and cheap.eval.attack.steps == 10
    more = load_config(tmp_path / "more.yaml")
    assert (more.attack.name, more.attack.steps, more.attack.step_size, more.attack.select) == ("pgd", 2, 0.05, "last")


def test_missing_base_is_an_error(tmp_path):
    msg = load_error(write(tmp_path, "base: nowhere.yaml\n"))
    assert "nowhere.yaml" in msg and "not found" in msg


def test_base_cycle_is_a_config_error(tmp_path):
    write(tmp_path, "base: b.yaml\ntrain: {epochs: 2}\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match=r"cycle.*a\.yaml.*b\.yaml.*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path, "base: self.yaml\n", "self.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_base_list_merges_in_order(tmp_path):
    """`base: [method.yaml, dataset.yaml]` (the paper recipes): later bases win, the file itself wins over all."""
    write(tmp_path, "base: common.yaml\ntransfer: {name: lora}\ntrain: {lr: 0.1, epochs: 2}\n", "method.yaml")
    write(tmp_path, "data: {batch_size: 64}\ntrain: {epochs: 3}\n", "common.yaml")
    write(tmp_path, "data: {name: fashion_mnist}\ntrain: {epochs: 9, warmup_epochs: 1}\n", "dataset.yaml")
    cell = write(tmp_path, "base: [method.yaml, dataset.yaml]\ntrain: {lr: 0.5}\n", "cell.yaml")
    cfg = load_config(cell)
    assert cfg.transfer.name == "lora" and cfg.data.name == "fashion_mnist" and cfg.data.batch_size == 64
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.warmup_epochs) == (9, 0.5, 1.0)
    assert "list of file names" in load_error(write(tmp_path, "base: [1, 2]\n", "bad.yaml"))
    # the same file twice along different branches (a diamond) is not a cycle
    write(tmp_path, "base: common.yaml\n", "other.yaml")
    assert load_config(write(tmp_path, "base: [method.yaml, other.yaml]\n", "diamond.yaml")).data.batch_size == 64


def test_base_errors_are_still_type_checked(tmp_path):
    write(tmp_path, "train: {epochs: '2'}\n", "b.yaml")
    assert "train.epochs: expected an integer" in load_error(write(tmp_path, "base: b.yaml\n"))


# --------------------------------------------------------------------------- dump, hash, eval attack


def test_dump_load_round_trip(tmp_path, tiny_cfg):
    cfg = tiny_cfg(["threat.eps=8/255", "backbone.mean=[0.5]", "backbone.std=[0.25]", "train.grad_clip=1.5",
                    "train.betas=[0.8, 0.95]", "eval.attack.step_size=0.01", "run.name=x"])
    path = tmp_path / "dumped.yaml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.backbone.mean == (0.5,) and again.train.betas == (0.8, 0.95)
    assert config_hash(again) == config_hash(cfg)


def test_default_config_round_trips(tmp_path):
    dump_config(Config(), tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml") == Config()


def test_config_hash_stable_and_sensitive(tiny_cfg):
    a, b = tiny_cfg(), tiny_cfg()
    assert a is not b
    h = config_hash(a)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert config_hash(b) == h
    assert config_hash(tiny_cfg(["threat.eps=0.11"])) != h
    assert config_hash(tiny_cfg(["run.seed=1"])) != h
    assert config_hash(a.attack) != config_hash(a.eval.attack)
    assert config_hash(a, "x") != config_hash(a, "y")


def test_one_threat_model_for_training_and_evaluation(tiny_cfg):
    cfg = tiny_cfg()
    assert (cfg.threat.norm, cfg.threat.eps) == ("linf", 0.1)
    assert (cfg.attack.name, cfg.attack.steps) == ("pgd", 2) and (cfg.eval.attack.name, cfg.eval.attack.steps) == \
        ("pgd", 3)
    assert not hasattr(cfg.attack, "eps") and not hasattr(cfg.eval.attack, "norm")  # nowhere else to differ
    assert Config().attack.steps == 7 and Config().eval.attack.steps == 10  # the paper's PGD-7 / PGD-10


@pytest.mark.parametrize("text, match", [
    ("attack: {name: fgsm, steps: 50}\n", r"attack: unknown key\(s\) \['steps'\]; valid keys are \['name', 'loss'\]"),
    ("eval: {attack: {name: autoattack, step_size: 0.1}}\n", r"eval.attack: unknown key\(s\) \['step_size'\]"),
    ("attack: {name: autoattack}\n", r"'autoattack' cannot be a training attack; choose one of \['fgsm', 'fgsm_rs', 'nfgsm', 'pgd'\]"),
])
def test_each_attack_has_only_its_own_fields(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_switching_the_attack_by_set_drops_the_old_attacks_fields(tiny_cfg):
    cfg = tiny_cfg(["attack.name=fgsm"])  # the recipe's PGD steps/step_size do not follow FGSM
    assert cfg.attack.name == "fgsm" and cfg.threat.eps == 0.1
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['steps'\]"):
        tiny_cfg(["attack.name=fgsm", "attack.steps=50"])
    cfg = tiny_cfg(["eval.attack.name=autoattack", "eval.attack.version=custom", "eval.attack.attacks=[apgd-ce]"])
    assert cfg.eval.attack.attacks == ("apgd-ce",)


@pytest.mark.parametrize("text", [
    "attack: {name: pgd, eps: 8/255, norm: linf}\n",
    "eval: {attack_steps: 10, attack_step_size: 2/255}\n",
    "transfer: {head_bias: focal}\n",
])
def test_old_style_recipes_fail_with_the_conversion(tmp_path, text):
    msg = load_error(write(tmp_path, text))
    assert "roli 0.1 key" in msg and "->" in msg
    assert any(new in msg for new in ("threat.eps", "eval.attack.steps", "transfer.head_init"))


def test_old_config_dicts_upgrade_to_the_same_config():
    old = {"attack": {"name": "pgd", "norm": "linf", "eps": 0.1, "step_size": 0.05, "steps": 5},
           "eval": {"attack_steps": 10, "attack_step_size": 0.025, "restarts": 1, "select": "robust"},
           "transfer": {"name": "linear_probe", "head_bias": "focal"}}
    cfg = from_dict(Config, upgrade(old), "")
    assert (cfg.threat.eps, cfg.attack.steps, cfg.eval.attack.steps, cfg.eval.attack.step_size) == (0.1, 5, 10, 0.025)
    assert cfg.transfer.head_init == "paper"


@pytest.mark.parametrize("over, warns", [
    (["attack.step_size=0.2"], "exceeds eps"),  # eps 0.1
    (["eval.attack.steps=1", "eval.attack.step_size=0.05"], "cannot reach the ball's boundary"),
    ([], None),
])
def test_suspicious_pgd_settings_warn(tiny_cfg, caplog, over, warns):
    with caplog.at_level("WARNING", logger="roli.config"):
        tiny_cfg(over)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert (warns in text) if warns else not text


def test_partial_stage1_keeps_the_stage1_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "stage1: {epochs: 2}\ntrain: {optimizer: adamw, lr: 0.0005}\n"))
    assert cfg.stage1.epochs == 2
    assert (cfg.stage1.optimizer, cfg.stage1.lr, cfg.stage1.weight_decay, cfg.stage1.warmup_epochs) == (
        "sgd", 0.05, 0.0, 0.0)  # stage 1's own defaults, not TrainConfig's (adamw, 1e-3, 0.01, 1.0)
    assert Config().stage1 == load_config(data={"stage1": {}}).stage1


def test_config_is_frozen(tiny_cfg):
    cfg = tiny_cfg()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 9  # type: ignore[misc]
