"""Transfer methods: which parameters adapt. A new method is one file with a registered class."""

from roli.registry import import_submodules
from roli.transfer.base import TRANSFER, TransferMethod, build_transfer

import_submodules(__name__, __path__)

__all__ = ["TRANSFER", "TransferMethod", "build_transfer"]
