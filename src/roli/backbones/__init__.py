"""Backbones: any timm architecture, or a registered small one, wrapped so attacks see [0,1] pixels."""

from roli.backbones.factory import BACKBONES, BackboneError, build_model, create_backbone
from roli.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["BACKBONES", "BackboneError", "build_model", "create_backbone"]
