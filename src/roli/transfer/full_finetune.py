"""Full finetuning: every backbone parameter trains."""

from collections.abc import Iterable

from torch import nn

from roli.transfer.base import TRANSFER, TransferMethod


@TRANSFER.register("full_finetune")
class FullFinetune(TransferMethod):
    """Full finetuning: every backbone parameter trains, with the head; the costliest and most flexible method.

    One of the transfer methods of Hua et al. (arXiv 2312.05716), with a RanLI or RoLI head like the others.
    Works on any backbone.

    Example:
        Recipe: ``transfer: {name: full_finetune, init: roli}`` (the head starts from RoLI's stage 1). Python:

        >>> from roli.config import TransferConfig
        >>> model = roli.build_transfer(TransferConfig(name="full_finetune")).apply(model)
    """

    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        """Every parameter of the backbone."""
        return net.parameters()
