"""Linear probing: only the classification head trains."""

from roli.transfer.base import TRANSFER, TransferMethod


@TRANSFER.register("linear_probe")
class LinearProbe(TransferMethod):
    pass
