"""Training objectives (`train.objective`): the loss a training step minimises, given the clean batch and the
training attack's points: pgd_at (Madry et al.), trades (Zhang et al. 2019), mart (Wang et al. 2020)."""

from roli.objectives.base import OBJECTIVES, BatchMean, Objective, build_objective
from roli.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["OBJECTIVES", "BatchMean", "Objective", "build_objective"]
