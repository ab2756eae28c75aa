"""Datasets: a registry of loaders returning deterministic train/val/test splits of [0,1] images."""

from roli.data.base import DATASETS, DataError, Splits, build_data, make_loader
from roli.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["DATASETS", "DataError", "Splits", "build_data", "make_loader"]
