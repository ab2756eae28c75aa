"""Image-folder datasets read lazily from disk: Caltech-256, CUB-200-2011, Stanford Dogs and a generic ImageFolder.

Layouts under `data.root` (the root may also be the dataset's own top folder):
- caltech256:    256_ObjectCategories/NNN.name/*.jpg  (257 classes, 257.clutter included)
- cub200:        CUB_200_2011/{images/, images.txt, image_class_labels.txt, train_test_split.txt}
- stanford_dogs: Images/<wnid-breed>/*.jpg + lists/{train_list,test_list}.mat (or the .mat files in the root)
- image_folder:  {train,test}/<class>/*.<img> and optionally val/<class>/...

Splits (protocol §4): with `data.split_file` the reference's JSON split (image path -> label per split). Otherwise the
official train/test split where one exists, and a seeded per-class carve (`data.split_seed`) with the paper's
per-class counts: Caltech-256 60 train+val images per class (57 + 3) and the rest test (14,649 / 771 / 15,187);
CUB 3 val images per class from the official train set (5,394 / 600 / 5,794); Dogs 10 per class (10,800 / 1,200 /
8,580). Small classes (test miniatures) keep at least one image per split.

Every image is opened and decoded once when the dataset is built (JPEGs at 1/8 scale), so an unreadable or
truncated file is reported here, by name, not deep inside a DataLoader worker; `data.skip_corrupt: true` drops
such files instead and counts them in results.json.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from roli.config import DataConfig
from roli.data.base import DATASETS, DataError, Splits, finish
from roli.data.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFiles(Dataset):
    """Images `root / files[i]` with labels, decoded on access and transformed to [0,1] tensors.

    `labels` (an int64 array) is known without decoding any image, so a limit can pick a class-balanced subset.
    """

    def __init__(self, root: Path, files: Sequence[str], labels: Sequence[int], transform: Callable,
                 indices: np.ndarray | None = None) -> None:
        self.root = Path(root)
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.indices = np.arange(len(self.files)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.root / self.files[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except _READ_ERRORS as e:  # readable at build time: the file changed since
            raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
        return self.transform(image), int(self.labels[i])

    @property
    def membership(self) -> list[str]:
        """The relative file paths, in order: what the split hash identifies."""
        return self.files

    def subset(self, idx: np.ndarray) -> ImageFiles:
        """The images at positions `idx`, with the same transform."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageFiles(self.root, [self.files[i] for i in idx], self.labels[idx], self.transform, self.indices[idx])


def _check_image(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            if im.mode.startswith(("I", "F")):  # PIL's RGB conversion clips 16/32-bit and float pixels to 0 or 255
                return (f"mode {im.mode} (16/32-bit or float pixels) cannot become 8-bit RGB without losing the "
                        "image; convert it to 8-bit first")
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG: decode at 1/8 scale, fast
            im.load()
    except _READ_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


def check_images(root: Path, files: Sequence[str], threads: int = 8) -> dict[str, str]:
    """file -> error for every file that cannot be opened and decoded."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # PIL decodes without holding the GIL
        errors = pool.map(_check_image, (root / f for f in files), chunksize=64)
        return {f: err for f, err in zip(files, errors) if err is not None}


def per_class_carve(labels: np.ndarray, counts: Callable[[int], Sequence[int]], seed: int,
                    where: str) -> list[np.ndarray]:
    """Seeded per-class split: a class with n examples gives counts(n)[j] to part j, the rest to a final part."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        sizes = list(counts(len(idx)))
        if min(sizes, default=1) < 1 or sum(sizes) >= len(idx):
            raise DataError(f"{where}: class {c} has only {len(idx)} images, too few for a train/val/test split")
        bounds = np.cumsum([0, *sizes, len(idx) - sum(sizes)])
        parts.append([idx[a:b] for a, b in itertools.pairwise(bounds)])
    return [np.sort(np.concatenate(p)) for p in zip(*parts)]


def read_split_file(path: str) -> dict[str, dict[str, object]]:
    """The reference's JSON split: a folder with {train,val,test}.json, or one file with those keys."""
    p = Path(path)
    try:
        if p.is_dir():
            missing = [s for s in ("train", "val", "test") if not (p / f"{s}.json").is_file()]
            if missing:
                raise DataError(f"split folder {p} lacks {[m + '.json' for m in missing]}")
            splits = {s: json.loads((p / f"{s}.json").read_text()) for s in ("train", "val", "test")}
        elif p.is_file():
            splits = json.loads(p.read_text())
        else:
            raise DataError(f"data.split_file {path!r} does not exist")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(splits, dict) or set(splits) != {"train", "val", "test"} or \
            not all(isinstance(v, dict) for v in splits.values()):
        raise DataError(f"{path}: expected train/val/test, each a mapping of image path -> label")
    return splits


def build_splits(cfg: DataConfig, image_dir: Path, parts: dict[str, tuple[list[str], np.ndarray]],
                 num_classes: int, source: str) -> Splits:
    """Check every image, drop or report unreadable ones, attach the transforms, and finish the splits."""
    all_files = [f for files, _ in parts.values() for f in files]
    bad = check_images(image_dir, all_files, threads=max(4, cfg.num_workers))
    extra = {"image_dir": str(image_dir), "skipped_corrupt": len(bad)}
    if bad and not cfg.skip_corrupt:
        listing = "; ".join(f"{image_dir / f}: {err}" for f, err in list(bad.items())[:5])
        raise DataError(f"{len(bad)} unreadable image(s) in {image_dir}: {listing}. Re-extract the dataset, or set "
                        "data.skip_corrupt: true to skip them (the count goes into results.json)")
    if bad:
        log.warning("skipping %d unreadable images in %s (data.skip_corrupt), e.g. %s", len(bad), image_dir,
                    next(iter(bad)))
        extra["skipped_files"] = sorted(bad)[:50]
    out = {}
    for split, (files, labels) in parts.items():
        keep = [i for i, f in enumerate(files) if f not in bad]
        transform = train_transform(cfg) if split == "train" else eval_transform(cfg)
        out[split] = ImageFiles(image_dir, [files[i] for i in keep], np.asarray(labels)[keep], transform)
    return finish(cfg, out["train"], out["val"], out["test"], num_classes, source, extra)


def from_split_file(cfg: DataConfig, image_dir: Path, source: str) -> Splits:
    """Splits from `data.split_file`; classes are numbered in the sorted order of the file's labels."""
    splits = read_split_file(cfg.split_file)
    try:
        raw = sorted({v for s in splits.values() for v in s.values()})  # the reference's sorted(set(labels))
    except TypeError:
        raise DataError(f"{cfg.split_file}: labels mix numbers and strings") from None
    index = {v: i for i, v in enumerate(raw)}
    for name, s in splits.items():
        if len(set(s.values())) != len(raw):
            log.warning("%s: split %s has %d of %d classes", cfg.split_file, name, len(set(s.values())), len(raw))
    parts = {k: (list(s), np.array([index[v] for v in s.values()])) for k, s in splits.items()}
    return build_splits(cfg, image_dir, parts, len(raw), f"{source}, split {cfg.split_file}")


def carve_official(cfg: DataConfig, image_dir: Path, files: list[str], labels: np.ndarray, is_train: np.ndarray,
                   val_per_class: int, source: str) -> Splits:
    """Official train/test; val = `val_per_class` seeded images per class from train."""
    train_idx = np.flatnonzero(is_train)
    tr, va = per_class_carve(labels[train_idx], lambda n: [n - min(val_per_class, n - 1)], cfg.split_seed,
                             str(image_dir))
    pick = lambda idx: ([files[i] for i in idx], labels[idx])
    parts = {"train": pick(train_idx[tr]), "val": pick(train_idx[va]), "test": pick(np.flatnonzero(~is_train))}
    return build_splits(cfg, image_dir, parts, int(labels.max()) + 1, source)


def _root(cfg: DataConfig, marker: str, *candidates: str) -> Path:
    """The first of root/<candidate> that contains `marker` (a file or folder name)."""
    if not cfg.root:
        raise DataError(f"{cfg.name}: set data.root to the folder holding {candidates[0] or marker}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root {cfg.root!r} is not a folder")
    for cand in candidates:
        if (root / cand / marker).exists():
            return root / cand
    raise DataError(f"{root}: no {marker} found (looked in {[str(root / c) for c in candidates]}); see the layout "
                    f"in roli/data/folder.py or the README")


def class_folders(folder: Path) -> list[Path]:
    """The sub-folders of `folder`, sorted: one per class, numbered in this order."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder} has no class folders")
    return classes


def list_images(folder: Path) -> list[str]:
    """The sorted image file names in a class folder (IMAGE_EXTS); an empty class folder is a DataError."""
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not names:  # a class no image teaches (or images with an extension roli does not read)
        raise DataError(f"{folder}: class folder with no images (looked for {', '.join(IMAGE_EXTS)}); add its images "
                        "or remove the folder")
    return names


def caltech_counts(n: int) -> list[int]:
    """[train, val] images of a class of n: 57 + 3, the rest test (the reference's 14,649 / 771 / 15,187)."""
    trainval = min(60, n - 1)
    val = min(3, max(1, trainval // 3))
    return [trainval - val, val]


@DATASETS.register("caltech256")
def caltech256(cfg: DataConfig) -> Splits:
    """Caltech-256 (Griffin et al., 2007): 257 classes (clutter included), 3 x 224 x 224 RGB crops in [0,1].

    Per class 57 train + 3 val images, seeded by `data.split_seed`, the rest test (14,649 / 771 / 15,187), or the
    reference's `data.split_file`.

    Example:
        Recipe: ``data: {name: caltech256, root: /data/caltech256}`` (holding 256_ObjectCategories/).
    """
    root = _root(cfg, "", "256_ObjectCategories", "")
    if not any(re.match(r"\d{3}\.", p.name) for p in root.iterdir() if p.is_dir()):
        raise DataError(f"{root}: not the Caltech-256 layout (256_ObjectCategories/NNN.name/*.jpg)")
    if cfg.split_file:
        return from_split_file(cfg, root, f"caltech256:{root}")
    files, labels = [], []
    for c, folder in enumerate(class_folders(root)):
        names = list_images(folder)
        files += [f"{folder.name}/{n}" for n in names]
        labels += [c] * len(names)
    labels = np.asarray(labels)

    tr, va, te = per_class_carve(labels, caltech_counts, cfg.split_seed, str(root))
    pick = lambda idx: ([files[i] for i in idx], labels[idx])
    return build_splits(cfg, root, {"train": pick(tr), "val": pick(va), "test": pick(te)}, int(labels.max()) + 1,
                        f"caltech256:{root}")


def _read_table(path: Path) -> dict[int, str]:
    if not path.is_file():
        raise DataError(f"{path} is missing; expected the CUB-200-2011 metadata files next to images/")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                key, value = line.split(maxsplit=1)
                out[int(key)] = value.strip()
            except ValueError:
                raise DataError(f"{path}:{n}: expected '<image id> <value>', got {line!r}") from None
    return out


@DATASETS.register("cub200")
def cub200(cfg: DataConfig) -> Splits:
    """CUB-200-2011 (Wah et al., 2011): 200 bird species, 3 x 224 x 224 RGB crops in [0,1].

    The official train/test split, with 3 seeded val images per class from train (5,394 / 600 / 5,794), or the
    reference's `data.split_file`.

    Example:
        Recipe: ``data: {name: cub200, root: /data/CUB_200_2011}`` (or its parent folder).
    """
    root = _root(cfg, "images.txt", "", "CUB_200_2011")
    if cfg.split_file:
        return from_split_file(cfg, root / "images", f"cub200:{root}")
    paths = _read_table(root / "images.txt")
    classes = _read_table(root / "image_class_labels.txt")
    is_train = _read_table(root / "train_test_split.txt")
    if not set(paths) == set(classes) == set(is_train):
        raise DataError(f"{root}: images.txt, image_class_labels.txt and train_test_split.txt list different ids")
    ids = sorted(paths)
    labels = np.array([int(classes[i]) - 1 for i in ids])  # 1-based class ids
    return carve_official(cfg, root / "images", [paths[i] for i in ids], labels,
                          np.array([is_train[i] == "1" for i in ids]), 3, f"cub200:{root}")


def _read_mat_list(path: Path) -> tuple[list[str], np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
        files = [str(np.asarray(f).ravel()[0]) for f in mat["file_list"].ravel()]
        labels = np.asarray(mat["labels"]).ravel().astype(np.int64) - 1  # 1-based
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"{path}: not a readable Stanford Dogs list ({type(e).__name__}: {e})") from None
    if len(files) != len(labels):
        raise DataError(f"{path}: {len(files)} files but {len(labels)} labels")
    return files, labels


@DATASETS.register("stanford_dogs")
def stanford_dogs(cfg: DataConfig) -> Splits:
    """Stanford Dogs (Khosla et al., 2011): 120 breeds, 3 x 224 x 224 RGB crops in [0,1].

    The official train/test lists, with 10 seeded val images per class from train (10,800 / 1,200 / 8,580), or
    the reference's `data.split_file`.

    Example:
        Recipe: ``data: {name: stanford_dogs, root: /data/stanford_dogs}`` (holding Images/ and lists/).
    """
    root = _root(cfg, "Images", "", "StanfordDogs", "stanford_dogs")
    if cfg.split_file:
        return from_split_file(cfg, root / "Images", f"stanford_dogs:{root}")
    lists = root / "lists" if (root / "lists" / "train_list.mat").is_file() else root
    for f in ("train_list.mat", "test_list.mat"):
        if not (lists / f).is_file():
            raise DataError(f"{root}: no {f} in lists/ or the root; extract lists.tar of Stanford Dogs there")
    train_files, train_labels = _read_mat_list(lists / "train_list.mat")
    test_files, test_labels = _read_mat_list(lists / "test_list.mat")
    labels = np.concatenate([train_labels, test_labels])
    is_train = np.arange(len(labels)) < len(train_labels)
    return carve_official(cfg, root / "Images", train_files + test_files, labels, is_train, 10,
                          f"stanford_dogs:{root}")


@DATASETS.register("image_folder")
def image_folder(cfg: DataConfig) -> Splits:
    """Your own images in class folders: `root`/{train,test}/<class>/*.jpg, optionally val/<class>/.

    Classes are the sorted folder names of train/; without val/ a seeded `data.val_fraction` of each train class
    (at least one image) becomes val. Images are RGB, resized and cropped to `data.crop_size`, in [0,1].

    Example:
        >>> splits = build_data(DataConfig(name="image_folder", root="/data/flowers", crop_size=224))
    """
    root = _root(cfg, "train", "")
    if cfg.split_file:
        return from_split_file(cfg, root, f"image_folder:{root}")
    if not (root / "test").is_dir():
        raise DataError(f"{root}: image_folder needs train/<class>/ and test/<class>/ (val/ optional), or "
                        "data.split_file")
    classes = [p.name for p in class_folders(root / "train")]
    index = {c: i for i, c in enumerate(classes)}

    def listing(split: str) -> tuple[list[str], np.ndarray]:
        files, labels = [], []
        for folder in class_folders(root / split):
            if folder.name not in index:
                raise DataError(f"{folder}: class {folder.name!r} is not among train/'s classes")
            names = list_images(folder)
            files += [f"{split}/{folder.name}/{n}" for n in names]
            labels += [index[folder.name]] * len(names)
        return files, np.asarray(labels, dtype=np.int64)

    train, test = listing("train"), listing("test")
    if (root / "val").is_dir():
        parts = {"train": train, "val": listing("val"), "test": test}
    else:  # a seeded val_fraction of every class, at least one image
        tr, va = per_class_carve(train[1], lambda n: [n - min(n - 1, max(1, round(n * cfg.val_fraction)))],
                                 cfg.split_seed, str(root / "train"))
        parts = {"train": ([train[0][i] for i in tr], train[1][tr]), "val": ([train[0][i] for i in va], train[1][va]),
                 "test": test}
    return build_splits(cfg, root, parts, len(classes), f"image_folder:{root}")
