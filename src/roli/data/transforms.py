"""Image transforms of the reference's JSON datasets (protocol §4): [0,1] tensors, no normalisation (it is in the
model).

train: Resize(resize_size, short side) -> RandomCrop(crop_size) -> RandomHorizontalFlip(0.5) -> [0,1] tensor
eval:  Resize(resize_size) -> CenterCrop(crop_size) -> [0,1] tensor
Random draws use torch's RNG, which the trainer seeds and checkpoints, so a resumed run sees the same crops.
"""

from __future__ import annotations

from torchvision import transforms as T

from roli.config import DataConfig


def train_transform(cfg: DataConfig) -> T.Compose:
    """Resize, random crop to `crop_size` and random flip, to a [0,1] tensor."""
    return T.Compose([T.Resize(cfg.resize_size), T.RandomCrop(cfg.crop_size), T.RandomHorizontalFlip(),
                      T.ToTensor()])


def eval_transform(cfg: DataConfig) -> T.Compose:
    """Resize and center crop to `crop_size`, to a [0,1] tensor."""
    return T.Compose([T.Resize(cfg.resize_size), T.CenterCrop(cfg.crop_size), T.ToTensor()])
