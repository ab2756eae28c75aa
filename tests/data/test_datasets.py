"""roli.data: shipped MNIST / Fashion-MNIST, idx folders, seeded splits, limits and seeded loaders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from roli.config import DataConfig
from roli.data import DATASETS, DataError, build_data, make_loader
from roli.data.base import ImageTensors, carve, membership_hash

pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str = "mnist", **kw):
    return build_data(DataConfig(name=name, **kw))


@pytest.fixture(scope="module")
def mnist(one_thread):
    return build("mnist")


@pytest.fixture(scope="module")
def fmnist(one_thread):
    return build("fashion_mnist")


# --------------------------------------------------------------------------- shipped datasets


def test_mnist_split_sizes(mnist):
    # 10,000 digits: a fixed 20% test carve (2,000), then val_fraction 0.1 of the remaining 8,000.
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (7200, 800, 2000)
    assert mnist.num_classes == 10
    info = mnist.info
    assert (info["train_size"], info["val_size"], info["test_size"]) == (7200, 800, 2000)
    assert info["name"] == "mnist" and info["split_seed"] == 0 and "shipped" in info["source"]


def test_mnist_splits_are_disjoint_and_cover_everything(mnist):
    tr, va, te = (set(d.indices.tolist()) for d in (mnist.train, mnist.val, mnist.test))
    assert not tr & va and not tr & te and not va & te
    assert tr | va | te == set(range(10_000))


def test_fashion_mnist_split_sizes(fmnist):
    assert (len(fmnist.train), len(fmnist.val), len(fmnist.test)) == (9000, 1000, 2000)
    tr, va = set(fmnist.train.indices.tolist()), set(fmnist.val.indices.tolist())
    assert not tr & va and tr | va == set(range(10_000))
    assert fmnist.num_classes == 10


@pytest.mark.parametrize("which", ["mnist", "fmnist"])
def test_values_in_unit_range_and_ten_classes(request, which):
    splits = request.getfixturevalue(which)
    for part in ("train", "val", "test"):
        ds = splits.split(part)
        x, y = ds[0]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64
        images = ds.images[:500].float() / 255
        assert images.min() == 0 and images.max() == 1  # the full [0,1] range is used, nothing beyond
        assert set(ds.labels.tolist()) == set(range(10))
    counts = torch.bincount(splits.train.labels, minlength=10)
    assert counts.min() >= 0.5 * counts.float().mean()  # roughly balanced, every class present


def test_getitem_scales_by_255(mnist):
    x, y = mnist.train[5]
    assert torch.equal(x, mnist.train.images[5].float() / 255)
    assert y == mnist.train.labels[5]


def test_splits_are_deterministic(mnist):
    again = build("mnist")
    for part in ("train", "val", "test"):
        assert again.info[f"{part}_hash"] == mnist.info[f"{part}_hash"]
        assert np.array_equal(again.split(part).indices, mnist.split(part).indices)
    assert torch.equal(again.train.images[:50], mnist.train.images[:50])


def test_split_seed_changes_train_val_only(mnist):
    other = build("mnist", split_seed=1)
    assert other.info["train_hash"] != mnist.info["train_hash"]
    assert other.info["val_hash"] != mnist.info["val_hash"]
    assert other.info["test_hash"] == mnist.info["test_hash"]  # the test set never moves
    assert len(other.val) == len(mnist.val)


def test_hash_is_the_membership_hash(mnist):
    assert mnist.info["val_hash"] == membership_hash(mnist.val.indices)
    assert mnist.info["val_hash"] != membership_hash(mnist.val.indices[::-1])


def test_val_fraction(one_thread):
    s = build("fashion_mnist", val_fraction=0.25)
    assert (len(s.train), len(s.val)) == (7500, 2500)


def test_limits_take_a_balanced_subset_of_each_split(mnist):
    # Not the first N any more (tests/data/test_limits.py): a seeded, class-balanced draw from each split.
    s = build("mnist", train_limit=100, val_limit=30, test_limit=20)
    assert (len(s.train), len(s.val), len(s.test)) == (100, 30, 20)
    assert (s.info["train_size"], s.info["val_size"], s.info["test_size"]) == (100, 30, 20)
    assert set(s.train.indices.tolist()) <= set(mnist.train.indices.tolist())  # drawn from the seeded carve
    assert set(s.val.indices.tolist()) <= set(mnist.val.indices.tolist())
    assert s.info["train_hash"] == membership_hash(s.train.indices)
    assert torch.bincount(s.test.labels, minlength=10).tolist() == [2] * 10
    pos = {int(i): p for p, i in enumerate(mnist.test.indices)}
    assert torch.equal(s.test.images, mnist.test.images[[pos[int(i)] for i in s.test.indices]])
    big = build("mnist", test_limit=50_000)  # a limit above the size is no limit
    assert len(big.test) == 2000


def test_unknown_split_and_dataset(mnist):
    with pytest.raises(DataError, match="train, val or test"):
        mnist.split("validation")
    with pytest.raises(KeyError, match="mnist"):
        build("imagenet21k")  # not registered: the error lists the registered names


def test_synthetic_dataset():
    s = build("synthetic")
    assert s.num_classes == 4 and len(s.train) + len(s.val) == 600 and len(s.test) == 200
    assert set(s.train.labels.tolist()) == {0, 1, 2, 3}
    assert torch.equal(build("synthetic").test.images, s.test.images)
    assert "synthetic" in DATASETS


def test_carve():
    rest, val = carve(100, 0.1, 7)
    assert len(val) == 10 and len(rest) == 90
    assert np.array_equal(np.sort(np.concatenate([rest, val])), np.arange(100))
    assert np.array_equal(carve(100, 0.1, 7)[1], val)
    assert not np.array_equal(carve(100, 0.1, 8)[1], val)


# --------------------------------------------------------------------------- idx folders (data.root)

IDX_NAMES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def idx_bytes(arr: np.ndarray) -> bytes:
    """The official idx format: 0, 0, type 0x08 (ubyte), ndim; big-endian uint32 sizes; the raw data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_folder(folder, n_train=60, n_test=20, gz=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in IDX_NAMES.items():
        data = idx_bytes(arrays[key])
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_folder_loads(tmp_path, name, gz):
    arrays = write_idx_folder(tmp_path / "idx", gz=gz)
    s = build(name, root=str(tmp_path / "idx"))
    assert (len(s.train), len(s.val), len(s.test)) == (54, 6, 20)
    assert s.info["source"] == f"idx:{tmp_path / 'idx'}"
    # every training image arrives exactly once, at its index, scaled to [0,1]
    got = torch.cat([s.train.images, s.val.images])
    idx = np.concatenate([s.train.indices, s.val.indices])
    assert sorted(idx.tolist()) == list(range(60))
    assert np.array_equal(got[:, 0].numpy(), arrays["x_train"][idx])
    assert np.array_equal(torch.cat([s.train.labels, s.val.labels]).numpy(), arrays["y_train"][idx])
    assert np.array_equal(s.test.images[:, 0].numpy(), arrays["x_test"])
    assert np.array_equal(s.test.labels.numpy(), arrays["y_test"])
    x, _ = s.test[3]
    assert torch.equal(x[0], torch.from_numpy(arrays["x_test"][3]).float() / 255)


def test_missing_folder_is_a_data_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        build("fashion_mnist", root=str(missing))
    assert str(missing) in str(info.value) and "not a folder" in str(info.value)


@pytest.mark.parametrize("stem", list(IDX_NAMES.values()))
def test_missing_file_is_a_data_error_naming_it(tmp_path, stem):
    folder = tmp_path / "idx"
    write_idx_folder(folder)
    (folder / f"{stem}.gz").unlink()
    with pytest.raises(DataError) as info:
        build("fashion_mnist", root=str(folder))
    msg = str(info.value)
    assert f"has no {stem}[.gz]" in msg and str(folder) in msg


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: data[: len(data) // 2],  # truncated pixels
        lambda data: data[:6],  # truncated header
        lambda data: b"",
    ],
)
def test_corrupt_idx_is_a_data_error_naming_the_file(tmp_path, corrupt):
    folder = tmp_path / "idx"
    write_idx_folder(folder)
    target = folder / "train-images-idx3-ubyte.gz"
    with gzip.open(target, "rb") as f:
        data = f.read()
    with gzip.open(target, "wb") as f:
        f.write(corrupt(data))
    with pytest.raises(DataError) as info:
        build("mnist", root=str(folder))
    assert str(target) in str(info.value) and "not a readable idx file" in str(info.value)


def test_not_gzip_is_a_data_error_naming_the_file(tmp_path):
    folder = tmp_path / "idx"
    write_idx_folder(folder)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError) as info:
        build("mnist", root=str(folder))
    assert str(target) in str(info.value)


@pytest.mark.parametrize("n_labels", [50, 70])
def test_image_label_count_mismatch_is_a_data_error(tmp_path, n_labels):
    """Fewer labels than images must not silently drop images; more labels must not be a bare IndexError."""
    folder = tmp_path / "idx"
    write_idx_folder(folder, n_train=60)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.zeros(n_labels, dtype=np.uint8)))
    with pytest.raises(DataError) as info:
        build("mnist", root=str(folder))
    msg = str(info.value)
    assert "train-images-idx3-ubyte has 60 images" in msg
    assert f"train-labels-idx1-ubyte has {n_labels} labels" in msg
    assert str(folder) in msg


# --------------------------------------------------------------------------- loaders


def order(loader) -> list[int]:
    return torch.cat([b[0] for b in loader]).tolist()


def test_make_loader_same_seed_same_order():
    ds = TensorDataset(torch.arange(50))
    a = order(make_loader(ds, 8, shuffle=True, seed=3))
    b = order(make_loader(ds, 8, shuffle=True, seed=3))
    c = order(make_loader(ds, 8, shuffle=True, seed=4))
    assert a == b
    assert a != c
    assert sorted(a) == list(range(50))  # a permutation, nothing dropped (drop_last is off)
    assert a != list(range(50))
    assert order(make_loader(ds, 8, shuffle=False, seed=3)) == list(range(50))


def test_make_loader_ignores_the_global_seed():
    ds = TensorDataset(torch.arange(30))
    torch.manual_seed(0)
    a = order(make_loader(ds, 7, shuffle=True, seed=5))
    torch.manual_seed(99)
    b = order(make_loader(ds, 7, shuffle=True, seed=5))
    assert a == b


def test_loader_over_images_batches(mnist):
    loader = make_loader(mnist.test, 256, shuffle=False)
    batches = list(loader)
    assert len(batches) == 8 and batches[-1][0].shape == (2000 - 7 * 256, 1, 28, 28)
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(y, mnist.test.labels[:256])


def test_image_tensors_subset_keeps_original_indices():
    ds = ImageTensors(np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2), np.arange(5))
    sub = ds.subset(np.array([4, 1]))
    assert sub.indices.tolist() == [4, 1]
    assert sub.subset(np.array([1])).indices.tolist() == [1]
    assert sub.images.shape == (2, 1, 2, 2)


@pytest.mark.parametrize(("train_labels", "num_classes"), [([0, 0, 0, 0], None), ([1, 1, 1, 1], 2), ([0] * 4, 1)])
def test_a_one_class_task_is_refused(train_labels, num_classes):
    """A one-class training split trains to 100% and tests nothing: a DataError that says so."""
    import torch
    from torch.utils.data import TensorDataset

    from roli.data.custom import from_datasets
    from roli.errors import DataError

    def ds(labels):
        return TensorDataset(torch.rand(len(labels), 1, 8, 8), torch.tensor(labels))

    with pytest.raises(DataError, match="1 class in the training split; a classifier needs at least 2"):
        other = [0, 1] if num_classes != 1 else [0, 0]
        from_datasets(ds(train_labels), ds(other), ds(other), num_classes=num_classes)
    from_datasets(ds([0, 1, 0, 1]), ds([0, 1]), ds([0, 1]))  # two classes: fine
