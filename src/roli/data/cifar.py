"""CIFAR-10 / CIFAR-100 from the official "python version" pickle batches in `data.root`.

Layout: `cifar-10-batches-py/{data_batch_1..5, test_batch}` and `cifar-100-python/{train, test}` (root may be that
folder or its parent). Images stay 32x32 uint8 in memory and have no augmentation, as in the reference (protocol §4,
B13); set `backbone.input_size: 224` to resize inside the model, so the perturbation lives at 32x32.
Split as the reference's VTAB loader: train = the first 90% of the official train set, val = the last 10%
(`data.val_fraction`), test = the official test set: 45,000 / 5,000 / 10,000.

The sizes match the reference, the membership does not: roli's val is the last 10% (5,000 images) of the
official *pickle-batch* order (the end of data_batch_5), while the reference's TFDS slice `train[90%:]` is the last
10% in TFDS's own order of the training set, which holds other images; so roli's train and val hold other images
than the reference's (the test set is the same 10,000). The membership hashes in results.json (`train_hash`,
`val_hash`: hashes of the example indices in the official train order) identify exactly which images were used.

The batches are pickles. They are read with an unpickler that only builds numpy arrays (like torch's
weights_only), so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from roli.config import DataConfig
from roli.data.base import DATASETS, DataError, ImageTensors, Splits, finish

LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
# The globals a pickled numpy array needs (numpy 1.x and 2.x module names); nothing else may be loaded.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # protocol-2 pickles encode bytes this way
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds only arrays)")
        module = module.replace("numpy.core.", "numpy._core.") if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch -> (N x 3 x 32 x 32 uint8 images, N labels)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        images = data.reshape(len(data), 3, 32, 32)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e}); re-download the "
                        "'python version' of the dataset") from None
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels; re-download the dataset")
    return images, labels


def find_folder(root: str | None, name: str) -> Path:
    """The folder holding the batches of `name`: `root`/cifar-10-batches-py (or cifar-100-python), or `root` itself."""
    folder_name = LAYOUTS[name][0]
    if not root:
        raise DataError(f"{name}: set data.root to the folder holding {folder_name}/ (the CIFAR 'python version')")
    root_path = Path(root)
    for cand in (root_path / folder_name, root_path):
        if (cand / LAYOUTS[name][1][0]).is_file():
            return cand
    if not root_path.is_dir():
        raise DataError(f"data.root {root!r} is not a folder; it must hold {folder_name}/")
    raise DataError(f"{root_path} has no {folder_name}/{LAYOUTS[name][1][0]}; expected the CIFAR python-version "
                    f"layout {folder_name}/{{{', '.join(LAYOUTS[name][1] + LAYOUTS[name][2])}}}")


def _read_all(folder: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder} is missing {missing}; re-download or re-extract the dataset")
    parts = [read_batch(folder / f, label_key) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar(cfg: DataConfig, name: str) -> Splits:
    """Read every batch and split as the reference: val = the last `data.val_fraction` of the official train set (in
    pickle-batch order), train = the rest, test = the official test set."""
    folder = find_folder(cfg.root, name)
    _, train_files, test_files, label_key, num_classes = LAYOUTS[name]
    x, y = _read_all(folder, train_files, label_key)
    x_test, y_test = _read_all(folder, test_files, label_key)
    for part, labels in (("train", y), ("test", y_test)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"{folder}: {part} labels outside 0..{num_classes - 1}; is this {name}?")
    full = ImageTensors(x, y)
    n_val = round(len(full) * cfg.val_fraction)
    # The reference's split: val is the *last* val_fraction of the official train order, not a random carve.
    train, val = full.subset(np.arange(len(full) - n_val)), full.subset(np.arange(len(full) - n_val, len(full)))
    return finish(cfg, train, val, ImageTensors(x_test, y_test), num_classes, f"cifar-python:{folder}",
                  {"val_split": f"last {cfg.val_fraction:g} of the official train set"})


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> Splits:
    """CIFAR-10 (Krizhevsky, 2009): 10 classes of 3 x 32 x 32 images in [0,1], 45,000 / 5,000 / 10,000 images.

    Needs the "python version" batches in `data.root`; nothing is downloaded. No augmentation (as the reference).

    Example:
        Recipe (a 224-pixel ViT-B resizes inside the model, the perturbation stays 32x32)::

            data: {name: cifar10, root: /data/cifar}     # /data/cifar/cifar-10-batches-py/data_batch_1 ...
            backbone: {name: vit_base_patch16_224, checkpoint: /path/to/weights.pth, input_size: 224}
    """
    return load_cifar(cfg, "cifar10")


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> Splits:
    """CIFAR-100 (Krizhevsky, 2009): 100 fine classes of 3 x 32 x 32 images in [0,1], 45,000 / 5,000 / 10,000.

    Needs the "python version" (`cifar-100-python/{train,test}`) in `data.root`; fine labels; no augmentation.

    Example:
        >>> splits = build_data(DataConfig(name="cifar100", root="/data/cifar"))  # holds cifar-100-python/
        >>> splits.num_classes
        100
    """
    return load_cifar(cfg, "cifar100")
