"""Miniature copies of the paper datasets in their real on-disk formats (pickle batches, JPEGs, .txt, .mat, JSON).

Shared by tests/data and the paper-recipe smoke tests; each writer returns the `data.root` to pass to roli.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

RNG_SEED = 1234


def _jpeg(path: Path, rng: np.random.Generator, size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def write_cifar(root: Path, name: str = "cifar10", per_batch: int = 4, n_test: int = 6) -> Path:
    """cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} or cifar-100-python/{train,test,meta}."""
    rng = np.random.default_rng(RNG_SEED)
    classes = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"

    def batch(path: Path, n: int, label: bytes) -> None:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        content = {b"batch_label": label, label_key: [int(v) for v in rng.integers(0, classes, n)], b"data": data,
                   b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        if name == "cifar100":
            content[b"coarse_labels"] = [0] * n
        path.write_bytes(pickle.dumps(content, protocol=3))

    if name == "cifar10":
        for i in range(1, 6):
            batch(folder / f"data_batch_{i}", per_batch, f"training batch {i} of 5".encode())
        batch(folder / "test_batch", n_test, b"testing batch 1 of 1")
    else:
        batch(folder / "train", 5 * per_batch, b"training")
        batch(folder / "test", n_test, b"testing")
    return root


def write_caltech256(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(RNG_SEED)
    for folder in ("001.ak47", "002.american-flag", "257.clutter"):
        for i in range(per_class):
            _jpeg(root / "256_ObjectCategories" / folder / f"{folder[:3]}_{i + 1:04d}.jpg", rng)
    return root


def write_cub200(root: Path, per_class: int = 5, n_test: int = 2) -> Path:
    rng = np.random.default_rng(RNG_SEED)
    top = root / "CUB_200_2011"
    lines, labels, split = [], [], []
    image_id = 0
    for c, name in enumerate(["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"], 1):
        for i in range(per_class + n_test):
            image_id += 1
            rel = f"{name}/{name[4:]}_{i:04d}_{image_id}.jpg"
            _jpeg(top / "images" / rel, rng)
            lines.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i < per_class)}")
    (top / "images.txt").write_text("\n".join(lines) + "\n")
    (top / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (top / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (top / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n3 003.Sooty_Albatross\n")
    return root


def write_stanford_dogs(root: Path, per_class: int = 5, n_test: int = 2) -> Path:
    import scipy.io

    rng = np.random.default_rng(RNG_SEED)
    lists: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for c, breed in enumerate(["n02085620-Chihuahua", "n02085782-Japanese_spaniel"], 1):
        for i in range(per_class + n_test):
            rel = f"{breed}/{breed.split('-')[0]}_{i}.jpg"
            _jpeg(root / "Images" / rel, rng)
            part = "train" if i < per_class else "test"
            lists[part][0].append(rel)
            lists[part][1].append(c)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    for part, (files, labels) in lists.items():
        cells = np.empty((len(files), 1), dtype=object)  # a MATLAB cell array of strings, as in the real lists
        for i, f in enumerate(files):
            cells[i, 0] = np.array([f])
        scipy.io.savemat(root / "lists" / f"{part}_list.mat",
                         {"file_list": cells, "annotation_list": cells, "labels": np.array(labels, dtype=float)[:, None]})
    return root


def write_image_folder(root: Path, per_class: int = 4, with_val: bool = False) -> Path:
    rng = np.random.default_rng(RNG_SEED)
    for split, n in (("train", per_class), ("test", 2), *((("val", 1),) if with_val else ())):
        for cls in ("cat", "dog"):
            for i in range(n):
                _jpeg(root / split / cls / f"{i}.jpg", rng)
    return root


def write_split_json(folder: Path, splits: dict[str, dict[str, object]]) -> Path:
    """The reference's data_splits/<dataset>/{train,val,test}.json: image path -> label."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, mapping in splits.items():
        (folder / f"{name}.json").write_text(json.dumps(mapping))
    return folder


WRITERS = {"cifar10": write_cifar, "cifar100": lambda r: write_cifar(r, "cifar100"), "caltech256": write_caltech256,
           "cub200": write_cub200, "stanford_dogs": write_stanford_dogs, "image_folder": write_image_folder}
