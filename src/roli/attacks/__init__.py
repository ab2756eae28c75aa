"""Attacks on [0,1] inputs; each registered class carries its own config class."""

from roli.attacks.base import ATTACKS, Attack, build_attack, make_attack
from roli.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["ATTACKS", "Attack", "build_attack", "make_attack"]
