"""Split containers, the seeded train/val carve, and DataLoaders whose order depends only on (seed, epoch)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from roli.config import DataConfig
from roli.registry import DATASETS


class DataError(ValueError):
    """A dataset folder is missing, has the wrong layout, or holds an unreadable file."""


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
        return ImageTensors(self.images.numpy()[idx], self.labels.numpy()[idx], self.indices[idx])


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)




def membership_hash(members) -> str:
    """A short hash of a split's membership: example indices, or (image folders) relative file paths in order."""
    if len(members) and isinstance(members[0], str):
        return hashlib.sha256("\n".join(members).encode()).hexdigest()[:16]
    return hashlib.sha256(np.asarray(members, dtype=np.int64).tobytes()).hexdigest()[:16]


def carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (rest, carved) split of range(n), each in shuffled order, so `*_limit` (the first N) is a random,
    class-balanced subset even when the source is stored class by class; the same seed gives the same split."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return perm[k:], perm[:k]


def finish(cfg: DataConfig, train: Dataset, val: Dataset, test: Dataset, num_classes: int, source: str,
           extra: dict | None = None) -> Splits:
    """Apply the configured limits and record sizes and split-membership hashes.

    The splits are ImageTensors or any dataset with `indices`, `subset(idx)` and optionally `membership` (e.g.
    the lazily loaded image files of roli.data.folder, whose membership is their relative paths).
    """
    parts = {"train": (train, cfg.train_limit), "val": (val, cfg.val_limit), "test": (test, cfg.test_limit)}
    out = {k: (d.subset(np.arange(min(lim, len(d)))) if lim else d) for k, (d, lim) in parts.items()}
    info = {"name": cfg.name, "source": source, "num_classes": num_classes, "split_seed": cfg.split_seed}
    for k, d in out.items():
        info[f"{k}_size"] = len(d)
        info[f"{k}_hash"] = membership_hash(getattr(d, "membership", d.indices))
    info.update(extra or {})
    return Splits(out["train"], out["val"], out["test"], num_classes, info)


def build_data(cfg: DataConfig) -> Splits:
    return DATASETS.get(cfg.name)(cfg)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A loader whose order depends only on `seed` (so a resumed run sees the same batches)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
                      drop_last=False, pin_memory=pin_memory)
