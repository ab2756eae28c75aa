"""roli's version and the library versions recorded with every result (ground floor: imports nothing of roli)."""

from __future__ import annotations

import platform

__version__ = "0.2.0"


def versions() -> dict:
    """Versions of roli, Python and the libraries a number depends on (for results.json)."""
    import numpy
    import timm
    import torch
    import torchvision

    return {"roli": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "numpy": numpy.__version__}
