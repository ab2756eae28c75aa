"""Split containers, the seeded train/val carve, seeded class-balanced limits, and DataLoaders whose order depends
only on (seed, epoch)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from roli.config import DataConfig
from roli.errors import DataError
from roli.registry import DATASETS


class ImageTensors(Dataset):
    """uint8 N x C x H x W images held in memory, served as float [0,1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray | None = None) -> None:
        if images.ndim == 3:
            images = images[:, None]
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].float().div_(255), self.labels[i]

    def subset(self, idx: np.ndarray) -> ImageTensors:
        """The examples at positions `idx`, keeping their original `indices` (for the membership hash)."""
        return ImageTensors(self.images.numpy()[idx], self.labels.numpy()[idx], self.indices[idx])


@dataclass
class Splits:
    """A dataset's train/val/test splits (examples: a C x H x W float image in [0,1] and an int label), its number
    of classes, and `info`: source, sizes, classes present and membership hashes (recorded in results.json)."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        """The split called `name` (train, val or test); any other name is a DataError."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


def membership_hash(members) -> str:
    """A short hash of a split's membership: example indices, or (image folders) relative file paths in order."""
    if len(members) and isinstance(members[0], str):
        return hashlib.sha256("\n".join(members).encode()).hexdigest()[:16]
    return hashlib.sha256(np.asarray(members, dtype=np.int64).tobytes()).hexdigest()[:16]


def carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (rest, carved) split of range(n), each in shuffled order; the same seed gives the same split."""
    perm = np.random.default_rng(seed).permutation(n)
    k = round(n * fraction)
    return perm[k:], perm[:k]


LIMIT_RULE = "class-balanced, seeded"
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}  # a stable number per split name for the limit's seed


def split_labels(d: Dataset) -> np.ndarray:
    """The labels of a split as an int64 array, without decoding images (ImageTensors and the lazily loaded
    ImageFiles of roli.data.folder both keep them in `labels`)."""
    labels = getattr(d, "labels", None)
    if labels is None:
        raise TypeError(f"{type(d).__name__} has no `labels`; a split needs them for a class-balanced limit")
    if isinstance(labels, torch.Tensor):
        labels = labels.numpy()
    return np.asarray(labels, dtype=np.int64)


def class_quotas(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """How many of n examples each class gives: as equal as possible, a class with fewer than its share gives all
    of them, and the remainder of an uneven share goes, one each, to seeded random classes that have more."""
    quota = np.zeros(len(counts), dtype=np.int64)
    left = np.arange(len(counts))  # the classes not yet capped by their size
    while n > 0 and len(left):
        share = n // len(left)
        small = left[counts[left] <= share]
        if len(small):  # these give everything; share what they leave among the others
            quota[small] = counts[small]
            n -= int(counts[small].sum())
            left = left[counts[left] > share]
            continue
        quota[left] = share
        extra = rng.choice(left, size=n - share * len(left), replace=False)  # all have >= share + 1 examples
        quota[extra] += 1
        break
    return quota


def balanced_subset(labels: np.ndarray, n: int, seed: int, split: str) -> np.ndarray:
    """Positions of a seeded, class-balanced subset of n examples, in a seeded shuffled order.

    Each class gives as equal a count as possible (see `class_quotas`), drawn at random within the class; the draw
    depends only on (labels, n, seed, split), so train, val and test limits are independent draws and the same
    config selects the same examples every time. n >= len(labels) keeps everything, in the original order.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, _SPLIT_CODES.get(split, 0)])
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = class_quotas(counts, n, rng)
    chosen = [rng.permutation(np.flatnonzero(inverse == c))[:q] for c, q in enumerate(quota) if q]
    return rng.permutation(np.concatenate(chosen))


class Relabeled(Dataset):
    """A split restricted to some classes (`data.classes`), its labels renumbered 0..k-1 in the order given."""

    def __init__(self, base: Dataset, classes: tuple[int, ...]) -> None:
        self.base, self.classes = base, tuple(classes)
        lookup = np.full(max(self.classes) + 1, -1, dtype=np.int64)
        lookup[list(self.classes)] = np.arange(len(self.classes))
        self._lookup = lookup
        self.labels = lookup[split_labels(base)]
        self.indices = base.indices

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x, torch.as_tensor(self._lookup[int(y)], dtype=torch.int64)

    @property
    def membership(self):
        """The underlying split's membership (file paths or example indices), for the split hash."""
        return getattr(self.base, "membership", self.base.indices)

    def subset(self, idx: np.ndarray) -> Relabeled:
        """The examples at positions `idx`, still relabelled."""
        return Relabeled(self.base.subset(idx), self.classes)


def keep_classes(d: Dataset, classes: tuple[int, ...]) -> Relabeled:
    """The examples of `d` whose label is in `classes`, relabelled 0..k-1 in that order."""
    labels = split_labels(d)
    return Relabeled(d.subset(np.flatnonzero(np.isin(labels, classes))), classes)


def finish(cfg: DataConfig, train: Dataset, val: Dataset, test: Dataset, num_classes: int, source: str,
           extra: dict | None = None) -> Splits:
    """Apply the configured limits and record sizes, classes present and split-membership hashes.

    A limit N keeps a seeded, class-balanced subset of N examples of its split (`balanced_subset`, seeded by
    `data.split_seed` and the split name) in a shuffled order; a limit >= the split's size keeps the split as is.
    The splits are ImageTensors or any dataset with `labels`, `indices`, `subset(idx)` and optionally `membership`
    (e.g. the lazily loaded image files of roli.data.folder, whose membership is their relative paths).
    """
    parts = {"train": (train, cfg.train_limit), "val": (val, cfg.val_limit), "test": (test, cfg.test_limit)}
    present = np.unique(split_labels(train))
    if num_classes < 2 or (len(present) < 2 and not cfg.classes):
        n = len(present) if num_classes >= 2 else num_classes
        raise DataError(f"{cfg.name} ({source}): {n} class{'es' if n != 1 else ''} in the training split; a "
                        "classifier needs at least 2 (a one-class task trains to 100% and tests nothing): check "
                        "data.root, data.split_file or data.classes")
    for k, (d, _) in parts.items():
        labels = split_labels(d)
        if len(labels) == 0:
            raise DataError(f"{cfg.name} ({source}): the {k} split is empty; check data.root, data.split_file or "
                            "the dataset's files")
        bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
        if len(bad):
            raise DataError(f"{cfg.name} ({source}): {k} labels {bad[:5].tolist()} are outside 0..{num_classes - 1} "
                            f"({num_classes} classes); the label files do not match the classes")
    if cfg.classes:
        missing = [c for c in cfg.classes if c >= num_classes]
        if missing:
            raise DataError(f"data.classes {missing} are not classes of {cfg.name} (0..{num_classes - 1}); pick "
                            "class numbers of the dataset")
        parts = {k: (keep_classes(d, cfg.classes), lim) for k, (d, lim) in parts.items()}
        for k, (d, _) in parts.items():
            if len(d) == 0:
                raise DataError(f"{cfg.name}: the {k} split has no example of data.classes {list(cfg.classes)}")
        num_classes = len(cfg.classes)
    out = {}
    for k, (d, lim) in parts.items():
        out[k] = d.subset(balanced_subset(split_labels(d), lim, cfg.split_seed, k)) if lim and lim < len(d) else d
    info = {"name": cfg.name, "source": source, "num_classes": num_classes, "split_seed": cfg.split_seed}
    if any(lim for _, lim in parts.values()):
        info["limit_rule"] = LIMIT_RULE
    if cfg.classes:
        info["classes"] = list(cfg.classes)
    for k, d in out.items():
        info[f"{k}_size"] = len(d)
        info[f"{k}_classes"] = len(np.unique(split_labels(d)))
        info[f"{k}_hash"] = membership_hash(getattr(d, "membership", d.indices))
    info.update(extra or {})
    return Splits(out["train"], out["val"], out["test"], num_classes, info)


def build_data(cfg: DataConfig) -> Splits:
    """The registered dataset `cfg.name`, split and limited as `cfg` says.

    Example:
        >>> splits = build_data(DataConfig(name="mnist", classes=(3, 4, 6, 7, 9), train_limit=1000))
        >>> len(splits.train), splits.num_classes
        (1000, 5)
        >>> loader = make_loader(splits.test, 256, shuffle=False)
    """
    return DATASETS.get(cfg.name)(cfg)


class Loader(DataLoader):
    """A DataLoader whose iterator starts only when iterated, and whose worker processes stop as soon as iteration
    ends, by an error too.

    torch's iterator starts its workers (and draws from the loader's generator) when it is created; tqdm.auto
    creates one in its constructor and never uses it, so every epoch started its workers twice and the data order
    depended on data.num_workers. After a worker error torch's iterator is often freed only by the garbage
    collector, which then waits 5 s per worker.
    """

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        it = super().__iter__()
        try:
            yield from it
        finally:
            stop = getattr(it, "_shutdown_workers", None)  # torch's multi-process iterator; a no-op once stopped
            if stop is not None:
                stop()


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A loader whose order depends only on `seed` (so a resumed run sees the same batches)."""
    gen = torch.Generator().manual_seed(seed)
    return Loader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
                  drop_last=False, pin_memory=pin_memory)
