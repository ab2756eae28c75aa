"""Full finetuning: every backbone parameter trains."""

from collections.abc import Iterable

from torch import nn

from roli.transfer.base import TRANSFER, TransferMethod


@TRANSFER.register("full_finetune")
class FullFinetune(TransferMethod):
    def trainable(self, net: nn.Module) -> Iterable[nn.Parameter]:
        return net.parameters()
