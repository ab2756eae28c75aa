"""Linear probing: only the classification head trains."""

from roli.transfer.base import TRANSFER, TransferMethod


@TRANSFER.register("linear_probe")
class LinearProbe(TransferMethod):
    """Linear probing: the whole backbone stays frozen and only the classification head trains.

    Adversarially trained, it is also RoLI's stage 1 (Hua et al., arXiv 2312.05716): the robust linear probe
    whose head initialises the other methods' heads (`init: roli`). Works on any backbone.

    Example:
        Recipe: ``transfer: {name: linear_probe}``. Python:

        >>> from roli.config import TransferConfig
        >>> model = roli.create_backbone("vit_tiny_28_fmnist_robust", num_classes=10)
        >>> model = roli.build_transfer(TransferConfig(name="linear_probe")).apply(model)  # 1,290 trainable
    """
