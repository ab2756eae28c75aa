"""roli.data.folder: Caltech-256, CUB-200, Stanford Dogs and ImageFolder layouts, split files, unreadable images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miniatures import (
    write_caltech256,
    write_cub200,
    write_image_folder,
    write_split_json,
    write_stanford_dogs,
)
from roli.config import DataConfig
from roli.data import DataError, build_data, make_loader
from roli.data.folder import caltech_counts, per_class_carve

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"resize_size": 16, "crop_size": 12}


def load(name, root, **kw):
    return build_data(DataConfig(name=name, root=str(root), **{**SMALL, **kw}))


def sizes(splits):
    return len(splits.train), len(splits.val), len(splits.test)


# --------------------------------------------------------------------------- the layouts


def test_caltech256(tmp_path):
    splits = load("caltech256", write_caltech256(tmp_path, per_class=5))
    assert splits.num_classes == 3  # class folders, clutter included
    assert sizes(splits) == (3 * 3, 3 * 1, 3 * 1)  # per class of 5: trainval 4 = 3 + 1, test 1
    assert all(f.startswith(("001.", "002.", "257.")) for f in splits.train.files)
    assert sorted(set(splits.test.labels.tolist())) == [0, 1, 2]  # every class in every split
    x, _ = splits.train[0]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1


def test_caltech256_root_may_be_the_categories_folder(tmp_path):
    write_caltech256(tmp_path)
    assert load("caltech256", tmp_path / "256_ObjectCategories").num_classes == 3


def test_cub200(tmp_path):
    splits = load("cub200", write_cub200(tmp_path, per_class=5, n_test=2))
    assert splits.num_classes == 3
    assert sizes(splits) == (3 * 2, 3 * 3, 3 * 2)  # official test; 3 val per class from train (5 -> 2 + 3)
    assert all(f.startswith("00") for f in splits.val.files)


def test_stanford_dogs(tmp_path):
    splits = load("stanford_dogs", write_stanford_dogs(tmp_path, per_class=5, n_test=2))
    assert splits.num_classes == 2
    assert sizes(splits) == (2 * 1, 2 * 4, 2 * 2)  # val = min(10, n - 1) per class from the official train list
    assert splits.test.files[0].startswith("n02085620-Chihuahua/")
    assert splits.test.labels.tolist() == [0, 0, 1, 1]


def test_image_folder_with_and_without_val(tmp_path):
    splits = load("image_folder", write_image_folder(tmp_path / "a", per_class=4))
    assert splits.num_classes == 2 and sizes(splits) == (6, 2, 4)  # val: round(4 * 0.1) -> at least 1 per class
    splits = load("image_folder", write_image_folder(tmp_path / "b", per_class=4, with_val=True))
    assert sizes(splits) == (8, 2, 4)


def test_train_and_eval_transforms(tmp_path):
    splits = load("cub200", write_cub200(tmp_path), resize_size=20, crop_size=16)
    a, b = splits.val[0][0], splits.val[0][0]
    assert torch.equal(a, b) and a.shape == (3, 16, 16)  # eval: Resize + CenterCrop, deterministic
    torch.manual_seed(0)
    crops = {tuple(splits.train[0][0].flatten()[:8].tolist()) for _ in range(8)}
    assert len(crops) > 1  # train: RandomCrop + flip


def test_loader_batches(tmp_path):
    splits = load("stanford_dogs", write_stanford_dogs(tmp_path), train_limit=2)
    x, y = next(iter(make_loader(splits.train, 2, shuffle=True, seed=0)))
    assert x.shape == (2, 3, 12, 12) and y.dtype == torch.int64
    assert splits.info["train_size"] == 2


def test_split_membership_is_seeded_and_recorded(tmp_path):
    root = write_caltech256(tmp_path, per_class=8)
    a, b, c = load("caltech256", root), load("caltech256", root), load("caltech256", root, split_seed=1)
    assert a.train.files == b.train.files and a.info["train_hash"] == b.info["train_hash"]
    assert a.info["train_hash"] != c.info["train_hash"]
    assert a.info["skipped_corrupt"] == 0


# --------------------------------------------------------------------------- the paper's split sizes


def test_caltech_carve_gives_the_paper_sizes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(257), rng.integers(80, 300, 257))  # every Caltech-256 class has >= 80 images
    labels = labels[: len(labels)]
    tr, va, te = per_class_carve(labels, caltech_counts, seed=0, where="caltech")
    assert (len(tr), len(va)) == (14_649, 771)
    assert len(tr) + len(va) + len(te) == len(labels)
    assert not set(tr) & set(va) and not set(va) & set(te)


def test_fine_grained_val_sizes():
    rng = np.random.default_rng(0)
    cub_train = np.repeat(np.arange(200), rng.integers(29, 31, 200))
    _, va = per_class_carve(cub_train, lambda n: [n - min(3, n - 1)], 0, "cub")
    assert len(va) == 600
    dogs_train = np.repeat(np.arange(120), 100)
    tr, va = per_class_carve(dogs_train, lambda n: [n - min(10, n - 1)], 0, "dogs")
    assert (len(tr), len(va)) == (10_800, 1_200)


# --------------------------------------------------------------------------- the reference's JSON split


def test_reference_json_split(tmp_path):
    root = write_cub200(tmp_path)
    files = sorted(p.relative_to(root / "CUB_200_2011" / "images").as_posix()
                   for p in (root / "CUB_200_2011" / "images").rglob("*.jpg"))
    label = lambda f: f[:3]  # (CUB labels are zero-padded strings in the reference files)
    split_dir = write_split_json(tmp_path / "splits", {
        "train": {f: label(f) for f in files[0::3]}, "val": {f: label(f) for f in files[1::3]},
        "test": {f: label(f) for f in files[2::3]}})
    splits = load("cub200", root, split_file=str(split_dir))
    assert sizes(splits) == (7, 7, 7)
    assert splits.num_classes == 3 and set(splits.train.labels.tolist()) == {0, 1, 2}  # sorted(set(labels))
    assert splits.train.files == files[0::3]
    assert "split" in splits.info["source"]


def test_bad_split_files(tmp_path):
    root = write_cub200(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load("cub200", root, split_file=str(tmp_path / "none.json"))
    write_split_json(tmp_path / "partial", {"train": {}, "val": {}})
    with pytest.raises(DataError, match=r"lacks \['test.json'\]"):
        load("cub200", root, split_file=str(tmp_path / "partial"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load("cub200", root, split_file=str(tmp_path / "bad.json"))


# --------------------------------------------------------------------------- broken folders and images


def test_missing_and_wrong_layouts(tmp_path):
    with pytest.raises(DataError, match="set data.root"):
        build_data(DataConfig(name="caltech256"))
    with pytest.raises(DataError, match="not a folder"):
        load("cub200", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images.txt found"):
        load("cub200", tmp_path / "empty")
    with pytest.raises(DataError, match="not the Caltech-256 layout"):
        load("caltech256", tmp_path / "empty")
    root = write_stanford_dogs(tmp_path / "dogs")
    (root / "lists" / "test_list.mat").unlink()
    with pytest.raises(DataError, match="no test_list.mat"):
        load("stanford_dogs", root)
    root = write_cub200(tmp_path / "cub")
    (root / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\nbroken\n")
    with pytest.raises(DataError, match="train_test_split.txt:2"):
        load("cub200", root)


def test_truncated_image_is_named_or_skipped(tmp_path):
    root = write_caltech256(tmp_path, per_class=5)
    bad = root / "256_ObjectCategories" / "002.american-flag" / "002_0003.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=r"002_0003\.jpg.*data.skip_corrupt"):
        load("caltech256", root)
    splits = load("caltech256", root, skip_corrupt=True)
    assert splits.info["skipped_corrupt"] == 1 and splits.info["skipped_files"] == ["002.american-flag/002_0003.jpg"]
    assert sum(sizes(splits)) == 14


def test_image_listed_but_missing_is_named(tmp_path):
    root = write_cub200(tmp_path)
    victim = next((root / "CUB_200_2011" / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        load("cub200", root)


def test_image_broken_after_build_fails_with_its_name(tmp_path):
    splits = load("caltech256", write_caltech256(tmp_path))
    path = splits.train.root / splits.train.files[0]
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=path.name):
        splits.train[0]
