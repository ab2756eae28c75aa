"""A seeded synthetic dataset for tests: noisy class prototypes, learnable in seconds."""

from __future__ import annotations

import numpy as np

from roli.config import DataConfig
from roli.data.base import DATASETS, ImageTensors, Splits, carve, finish

SIZE, CLASSES, N_TRAIN, N_TEST = 28, 4, 600, 200


@DATASETS.register("synthetic")
def synthetic(cfg: DataConfig) -> Splits:
    """4 classes of 1 x 28 x 28 images in [0,1]: fixed random prototypes plus noise (540 / 60 / 200 by default).

    The images are the same every time; only `data.split_seed` changes the train/val carve. For tests and smoke
    runs: learnable in seconds by vit_tiny_28.

    Example:
        Recipe: ``data: {name: synthetic, batch_size: 64}``.
    """
    rng = np.random.default_rng(1234)  # the data itself is fixed; split_seed only changes the carve
    protos = rng.uniform(0.15, 0.85, size=(CLASSES, 1, SIZE, SIZE))

    def draw(n: int) -> ImageTensors:
        y = rng.integers(0, CLASSES, size=n)
        x = np.clip(protos[y] + rng.normal(0, 0.15, size=(n, 1, SIZE, SIZE)), 0, 1)
        return ImageTensors(np.rint(x * 255).astype(np.uint8), y)

    full, test = draw(N_TRAIN), draw(N_TEST)
    tr, va = carve(len(full), cfg.val_fraction, cfg.split_seed)
    return finish(cfg, full.subset(tr), full.subset(va), test, CLASSES, "synthetic (seeded prototypes)")
