"""roli.registry: name -> object registries used for attacks, backbones, datasets, norms and transfer methods."""

from __future__ import annotations

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
