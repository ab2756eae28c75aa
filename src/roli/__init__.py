"""roli: adversarially robust transfer learning (RanLI / RoLI, Hua et al., CVPR 2024, arXiv 2312.05716)."""

import os as _os

# roli never downloads weights: without this, a timm/HF hub call offline hangs ~50 s in retries first.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"

from roli.attacks import build_attack as build_attack
from roli.backbones import create_backbone as create_backbone
from roli.config import Config as Config
from roli.config import load_config as load_config
from roli.evaluation.accuracy import evaluate as evaluate
from roli.training.pipeline import run as run
from roli.transfer import build_transfer as build_transfer

__all__ = ["Config", "build_attack", "build_transfer", "create_backbone", "evaluate", "load_config", "run"]
