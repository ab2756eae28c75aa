"""roli: adversarially robust transfer learning (RanLI / RoLI, Hua et al., CVPR 2024, arXiv 2312.05716).

The public API is imported lazily (PEP 562), so `import roli` and `roli --help` stay fast and importing the package
does not pull in training or evaluation code.
"""

import importlib as _importlib

from roli.version import __version__ as __version__

_API = {
    "Config": "roli.config",
    "load_config": "roli.config",
    "build_attack": "roli.attacks",
    "make_attack": "roli.attacks",
    "create_backbone": "roli.backbones",
    "build_transfer": "roli.transfer",
    "evaluate": "roli.evaluation.accuracy",
    "run": "roli.training.pipeline",
}
__all__ = ["Config", "build_attack", "build_transfer", "create_backbone", "evaluate", "load_config", "make_attack", "run"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(_importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'roli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
