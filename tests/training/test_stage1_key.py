"""A stage-1 cache key names the settings that make the head, so a setting added later and left at its default must
not change it: a user's finished RoLI stage 1 stays reusable across roli versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from roli.config import config_hash, load_config
from roli.training.pipeline import stage1_config, stage1_key

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("recipe, key", [  # the keys roli 0.2 gave these recipes (computed with its code)
    ("study/tuned/robust_lora_roli.tuned.yaml", "67650c6accf94256"),
    ("tiny/mnist_lora_roli.yaml", "ffb7fb8abd92557d"),
    ("paper/vit_b/lora_cifar10_roli.yaml", "ff50aee1ce75c44a"),
])
def test_stage1_keys_are_those_of_roli_0_2(recipe, key):
    assert stage1_key(stage1_config(load_config(RECIPES / recipe))) == key


def test_a_new_setting_changes_the_key_once_it_is_used():
    cfg = load_config(RECIPES / "tiny/mnist_lora_roli.yaml")
    trades = load_config(RECIPES / "tiny/mnist_lora_roli.yaml",
                         ["train.objective.name=trades", "stage1.objective.name=trades", "attack.loss=kl"])
    assert config_hash(cfg.stage1) != config_hash(trades.stage1)
