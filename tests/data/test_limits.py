"""data.*_limit and `roli eval --limit`: a seeded, class-balanced subset of every split, in a shuffled order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miniatures import write_caltech256, write_cifar, write_cub200, write_stanford_dogs
from roli.config import DataConfig
from roli.data import build_data
from roli.data.base import ImageTensors, balanced_subset, class_quotas, finish, membership_hash

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"resize_size": 16, "crop_size": 12}


def load(name, root, **kw):
    return build_data(DataConfig(name=name, root=str(root), **{**SMALL, **kw}))


def counts(labels, num_classes):
    return np.bincount(np.asarray(labels), minlength=num_classes)


def assert_balanced(chosen, available, n):
    """n examples in all; a class gives all it has or within 1 of the largest count; unexhausted ones differ <= 1."""
    chosen, available = np.asarray(chosen), np.asarray(available)
    assert chosen.sum() == n and (chosen <= available).all()
    open_ = chosen < available  # classes that could have given more
    if open_.any():
        assert chosen[open_].max() - chosen[open_].min() <= 1
        assert (chosen[~open_] <= chosen[open_].min() + 1).all()  # a capped class never gets more than a share


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    """CUB miniature listed class by class: official test = 6 images of each of 3 classes, in class order."""
    return write_cub200(tmp_path_factory.mktemp("cub"), per_class=5, n_test=6)


# --------------------------------------------------------------------------- class-sorted folder datasets


@pytest.mark.parametrize("name, writer, split, limit", [
    ("caltech256", lambda r: write_caltech256(r, per_class=12), "train", 7),  # train: 8 per class, class-sorted
    ("cub200", lambda r: write_cub200(r, per_class=5, n_test=6), "test", 7),  # test: 6 per class, class-sorted
    ("stanford_dogs", lambda r: write_stanford_dogs(r, per_class=5, n_test=6), "test", 5),
])
def test_limit_on_a_class_sorted_folder_covers_every_class(tmp_path, name, writer, split, limit):
    full = load(name, writer(tmp_path))
    assert np.all(np.diff(full.split(split).labels) >= 0)  # the miniature really is listed class by class
    s = load(name, tmp_path, **{f"{split}_limit": limit})
    part = s.split(split)
    assert len(part) == limit and s.info[f"{split}_size"] == limit
    got = counts(part.labels, s.num_classes)
    assert (got > 0).all() and got.max() - got.min() <= 1  # every class, as even as possible
    assert s.info[f"{split}_classes"] == s.num_classes
    assert s.info["limit_rule"] == "class-balanced, seeded"
    assert set(part.files) <= set(full.split(split).files)  # a subset of the split, nothing from elsewhere
    assert s.info[f"{split}_hash"] == membership_hash(part.files)  # the hash names the chosen subset


def test_limited_order_is_not_class_sorted(cub):
    part = load("cub200", cub, test_limit=9).test
    assert sorted(counts(part.labels, 3).tolist()) == [3, 3, 3]
    assert np.any(np.diff(part.labels) < 0)  # mixed mini-batches, not 0,0,0,1,1,1,2,2,2
    labels = part.labels.tolist()
    assert labels != sorted(labels)


def test_same_config_same_subset(cub):
    a = load("cub200", cub, test_limit=6, val_limit=4)
    b = load("cub200", cub, test_limit=6, val_limit=4)
    assert a.test.files == b.test.files and a.val.files == b.val.files  # same images, same order
    assert a.info["test_hash"] == b.info["test_hash"] and a.info["val_hash"] == b.info["val_hash"]


def test_split_seed_changes_the_limited_subset(cub):
    # The official test set does not depend on split_seed: only the limit's draw can differ.
    assert load("cub200", cub, split_seed=1).test.files == load("cub200", cub).test.files
    a = load("cub200", cub, test_limit=6)
    b = load("cub200", cub, test_limit=6, split_seed=1)
    assert set(a.test.files) != set(b.test.files)
    assert a.info["test_hash"] != b.info["test_hash"]
    assert sorted(counts(b.test.labels, 3).tolist()) == [2, 2, 2]  # still balanced


@pytest.mark.parametrize("extra", [0, 5])
def test_limit_at_or_above_the_size_keeps_the_whole_split(cub, extra):
    full = load("cub200", cub)
    s = load("cub200", cub, test_limit=len(full.test) + extra)
    assert s.test.files == full.test.files  # all of it, in its own order
    assert s.info["test_hash"] == full.info["test_hash"] and s.info["test_size"] == len(full.test)
    assert s.info["test_classes"] == 3 and s.info["limit_rule"] == "class-balanced, seeded"


def test_no_limit_records_classes_but_no_rule(cub):
    s = load("cub200", cub)
    assert "limit_rule" not in s.info
    assert (s.info["train_classes"], s.info["val_classes"], s.info["test_classes"]) == (3, 3, 3)


# --------------------------------------------------------------------------- in-memory datasets


def test_mnist_test_limit_gives_ten_per_class(one_thread):
    s = build_data(DataConfig(name="mnist", test_limit=100))
    assert len(s.test) == 100
    assert counts(s.test.labels, 10).tolist() == [10] * 10
    assert s.info["test_classes"] == 10 and s.info["limit_rule"] == "class-balanced, seeded"
    assert s.info["test_hash"] == membership_hash(s.test.indices)
    full = build_data(DataConfig(name="mnist"))
    assert set(s.test.indices.tolist()) <= set(full.test.indices.tolist())
    assert s.info["train_hash"] == full.info["train_hash"]  # the other splits are untouched


def test_mnist_uneven_limit_spreads_the_remainder(one_thread):
    s = build_data(DataConfig(name="mnist", train_limit=105, val_limit=23))
    assert sorted(counts(s.train.labels, 10).tolist()) == [10] * 5 + [11] * 5
    assert sorted(counts(s.val.labels, 10).tolist()) == [2] * 7 + [3] * 3


def test_cifar_limit_uses_the_labels(tmp_path):
    root = write_cifar(tmp_path, "cifar10", per_batch=8, n_test=6)  # 36 train images, random labels
    full = load("cifar10", root)
    s = load("cifar10", root, train_limit=10)
    assert len(s.train) == 10 and s.info["train_size"] == 10
    assert_balanced(counts(s.train.labels, 10), counts(full.train.labels, 10), 10)
    assert set(s.train.indices.tolist()) <= set(full.train.indices.tolist())
    assert s.info["train_hash"] == membership_hash(s.train.indices)


# --------------------------------------------------------------------------- the rule itself


def test_small_classes_give_all_and_the_rest_is_spread():
    labels = np.repeat([0, 1, 2, 3], [2, 10, 10, 4])
    for n in (3, 10, 12, 13, 17, 25):
        idx = balanced_subset(labels, n, seed=0, split="test")
        assert len(idx) == n == len(set(idx.tolist()))
        assert_balanced(counts(labels[idx], 4), counts(labels, 4), n)
    got = counts(labels[balanced_subset(labels, 12, 0, "test")], 4).tolist()  # 2 (all), then 10 over three
    assert got[0] == 2 and sorted(got[1:]) == [3, 3, 4]
    assert counts(labels[balanced_subset(labels, 18, 0, "test")], 4).tolist() == [2, 6, 6, 4]


def test_quotas_with_fewer_examples_than_classes():
    q = class_quotas(np.array([5, 5, 5, 5]), 2, np.random.default_rng(0))
    assert sorted(q.tolist()) == [0, 0, 1, 1]


def test_splits_are_independent_draws():
    labels = np.tile(np.arange(5), 40)
    train = balanced_subset(labels, 20, 0, "train")
    test = balanced_subset(labels, 20, 0, "test")
    assert not np.array_equal(train, test)
    assert np.array_equal(balanced_subset(labels, 20, 0, "train"), train)
    assert np.array_equal(balanced_subset(labels, 200, 0, "train"), np.arange(200))


def test_finish_applies_the_rule_to_any_split():
    labels = np.repeat(np.arange(4), 25)  # class-sorted in memory
    ds = ImageTensors(np.zeros((100, 2, 2), dtype=np.uint8), labels)
    s = finish(DataConfig(name="mnist", train_limit=8, val_limit=8, test_limit=8), ds, ds, ds, 4, "test")
    for k in ("train", "val", "test"):
        assert counts(s.split(k).labels, 4).tolist() == [2, 2, 2, 2] and s.info[f"{k}_classes"] == 4
    assert len({tuple(s.split(k).indices.tolist()) for k in ("train", "val", "test")}) == 3  # three draws


def test_classes_keep_only_the_listed_classes_renumbered_in_order():
    from roli.config import DataConfig
    from roli.data.base import build_data

    full = build_data(DataConfig(name="fashion_mnist", val_fraction=0.1))
    part = build_data(DataConfig(name="fashion_mnist", classes=(3, 4, 6, 7, 9), val_fraction=0.1))
    assert part.num_classes == 5 and part.info["classes"] == [3, 4, 6, 7, 9]
    for split in ("train", "val", "test"):
        whole, kept = full.split(split), part.split(split)
        mask = np.isin(whole.labels.numpy(), [3, 4, 6, 7, 9])
        assert len(kept) == int(mask.sum())
        assert np.array_equal(kept.indices, whole.indices[mask])  # the same images, in the same order
        lookup = {3: 0, 4: 1, 6: 2, 7: 3, 9: 4}
        assert np.array_equal(kept.labels, [lookup[v] for v in whole.labels.numpy()[mask]])
        x, y = kept[5]
        x0, y0 = whole[int(np.flatnonzero(mask)[5])]
        assert torch.equal(x, x0) and int(y) == lookup[int(y0)]
    limited = build_data(DataConfig(name="fashion_mnist", classes=(3, 4), val_fraction=0.1, test_limit=50))
    assert len(limited.test) == 50 and set(np.unique(limited.test.labels)) == {0, 1}


def test_classes_outside_the_dataset_are_a_clear_error():
    from roli.config import DataConfig
    from roli.data.base import build_data
    from roli.errors import DataError

    with pytest.raises(DataError, match="not classes of fashion_mnist"):
        build_data(DataConfig(name="fashion_mnist", classes=(3, 12)))
    with pytest.raises(ValueError, match="distinct"):
        DataConfig(name="fashion_mnist", classes=(3, 3))
