"""Your own data: any map-style torch Datasets returning (image in [0,1] as C x H x W float, integer label).

    splits = from_datasets(train_ds, val_ds, test_ds)            # or roli.run(cfg, data=(train_ds, val_ds, test_ds))

Limits (`data.*_limit`) take a seeded class-balanced subset as for the registered datasets; labels are read from a
`labels`/`targets` attribute when the dataset has one (torchvision's datasets do), else by indexing each example.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from roli.config import DataConfig
from roli.data.base import DataError, Splits, finish


class DatasetView(Dataset):
    """A dataset seen through an index list, with the `indices`, `labels` and `subset` roli's splits use."""

    def __init__(self, dataset: Dataset, indices: np.ndarray | None = None) -> None:
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.dataset[int(self.indices[i])]
        return x, torch.as_tensor(y, dtype=torch.int64)

    @property
    def labels(self) -> np.ndarray:
        """The labels of the viewed examples: the dataset's `labels`/`targets` if it has them, else read once by
        indexing every example (computed on first use, then cached)."""
        if self._labels is None:
            own = getattr(self.dataset, "labels", None)
            own = getattr(self.dataset, "targets", None) if own is None else own
            full = np.asarray(own, dtype=np.int64) if own is not None else None
            self._labels = full[self.indices] if full is not None else \
                np.array([int(self.dataset[int(i)][1]) for i in self.indices], dtype=np.int64)
        return self._labels

    def subset(self, idx: np.ndarray) -> DatasetView:
        """The view of this view's examples at positions `idx`."""
        return DatasetView(self.dataset, self.indices[np.asarray(idx)])


def from_datasets(train: Dataset, val: Dataset, test: Dataset, num_classes: int | None = None,
                  config: DataConfig | None = None, name: str = "custom") -> Splits:
    """roli Splits from three Datasets; `num_classes` defaults to max label + 1 over the three."""
    views = [DatasetView(d) for d in (train, val, test)]
    for split, v in zip(("train", "val", "test"), views):
        if len(v) == 0:
            raise DataError(f"the {split} dataset is empty")
    labels = np.concatenate([v.labels for v in views])
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise DataError(f"labels must be in [0, {num_classes or 'num_classes'}); found {labels.min()}..{labels.max()}")
    num_classes = num_classes or int(labels.max()) + 1
    x, _ = views[0][0]
    if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.is_floating_point()):
        raise DataError(f"a dataset example must be a float C x H x W tensor in [0,1]; got {type(x).__name__} "
                        f"{tuple(getattr(x, 'shape', ()))} (add torchvision.transforms.ToTensor())")
    cfg = config or DataConfig(name=name)
    return finish(cfg, *views, num_classes, source=f"Python datasets ({', '.join(type(d).__name__ for d in (train, val, test))})")
