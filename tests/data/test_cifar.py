"""roli.data.cifar: the official python-pickle batches, the reference's last-10% val split, safe unpickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from miniatures import write_cifar
from roli.config import DataConfig
from roli.data import DataError, build_data

pytestmark = pytest.mark.usefixtures("one_thread")


def load(name, root, **kw):
    return build_data(DataConfig(name=name, root=str(root), **kw))


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_layout_and_split(tmp_path, name, classes):
    root = write_cifar(tmp_path, name, per_batch=4, n_test=6)
    splits = load(name, root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 6)  # 90% / last 10% / official test
    assert splits.num_classes == classes
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert 0 <= int(y) < classes
    # val is the *last* 10% of the official train order (the reference's VTAB split), not a random carve
    assert list(splits.val.indices) == [18, 19] and list(splits.train.indices) == list(range(18))
    assert splits.info["val_split"].startswith("last 0.1")
    assert splits.info["train_size"] == 18 and len(splits.info["val_hash"]) == 16


def test_cifar_pixels_match_the_batch(tmp_path):
    root = write_cifar(tmp_path, "cifar10", per_batch=4)
    with open(root / "cifar-10-batches-py" / "data_batch_5", "rb") as f:
        last = pickle.load(f, encoding="bytes")
    splits = load("cifar10", root)
    x, y = splits.val[1]  # the last training image overall
    expected = torch.from_numpy(last[b"data"][-1].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(x, expected)
    assert int(y) == last[b"labels"][-1]


def test_root_may_be_the_batches_folder_itself(tmp_path):
    root = write_cifar(tmp_path, "cifar10")
    assert len(load("cifar10", root / "cifar-10-batches-py").test) == 6


def test_missing_root_and_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="set data.root"):
        build_data(DataConfig(name="cifar10"))
    with pytest.raises(DataError, match="not a folder"):
        load("cifar10", tmp_path / "nope")
    with pytest.raises(DataError, match="cifar-10-batches-py/data_batch_1"):
        load("cifar10", tmp_path)
    root = write_cifar(tmp_path / "a", "cifar10")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing \['data_batch_3'\]"):
        load("cifar10", root)


def test_truncated_batch_names_the_file(tmp_path):
    root = write_cifar(tmp_path, "cifar10")
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR python batch"):
        load("cifar10", root)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    root = write_cifar(tmp_path, "cifar10")
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load("cifar10", root)
    assert "never run" not in capsys.readouterr().out


def test_protocol_2_pickles_load(tmp_path):
    """Batches re-pickled with protocol 2 encode bytes through _codecs.encode; that one global is allowed."""
    root = write_cifar(tmp_path, "cifar10")
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "rb") as f:
        content = pickle.load(f)
    batch.write_bytes(pickle.dumps(content, protocol=2))
    assert len(load("cifar10", root).train) == 18


def test_wrong_labels_are_an_error(tmp_path):
    """CIFAR-100-like labels (up to 99) in the CIFAR-10 layout do not fit 10 classes."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    content = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 99]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match="labels outside 0..9"):
        load("cifar10", tmp_path)
