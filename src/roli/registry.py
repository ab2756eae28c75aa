"""Name -> object registries on the ground floor: adding a backbone, method, attack or dataset is one new file.

Each registry knows the package whose modules fill it and imports that package (by name) the first time it is
asked for an entry, so `roli.config` can resolve `name: pgd` to PGD's config class without importing
`roli.attacks` itself: the dependency arrows point up only at run time, through this file.

Plugins: an installed package that declares an entry point in the group `roli.plugins` (pyproject:
`[project.entry-points."roli.plugins"] my_plugin = "my_package.roli_plugin"`) is imported the first time any
registry is asked for an entry; its module registers entries with `from roli.registry import TRANSFER` and
`@TRANSFER.register("my_method")` (same for ATTACKS, BACKBONES, DATASETS, CONVERTERS). No edit of roli is needed.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from roli.errors import UnknownName

T = TypeVar("T")
log = logging.getLogger(__name__)
PLUGIN_GROUP = "roli.plugins"
_plugins_loaded: list[str] | None = None  # names of the plugins imported so far; None = not looked for yet


def load_plugins() -> list[str]:
    """Import every `roli.plugins` entry point once; a broken plugin is logged and skipped, never fatal."""
    global _plugins_loaded
    if _plugins_loaded is None:
        from importlib.metadata import entry_points

        _plugins_loaded = []
        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
                _plugins_loaded.append(ep.name)
            except Exception as e:
                log.warning("roli plugin %r (%s) failed to load and is skipped: %s: %s", ep.name, ep.value,
                            type(e).__name__, e)
    return list(_plugins_loaded)


class Registry(Generic[T]):
    """Registered entries by name; `package` (a dotted module name) is imported on first look-up to fill it."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}

    def _fill(self) -> None:
        load_plugins()
        if self.package is not None:
            package, self.package = self.package, None  # once; a failing import raises again next time
            try:
                importlib.import_module(package)
            except BaseException:
                self.package = package
                raise

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that enters its class or factory under `name`; a name registered twice is a KeyError.

        Example:
            >>> @TRANSFER.register("my_method")
            ... class MyMethod(TransferMethod): ...
        """
        def deco(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry registered as `name`; an unknown name raises UnknownName listing the valid ones."""
        self._fill()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; choose one of {self.names()}")  # a KeyError too
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, sorted (the package and plugins are imported first)."""
        self._fill()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._fill()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module of a subpackage so its @register decorators run."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


# The registries. Entries are classes (attacks, transfer methods: each carries its `config_cls`) or factories.
ATTACKS: Registry[Any] = Registry("attack", "roli.attacks")
TRANSFER: Registry[Any] = Registry("transfer method", "roli.transfer")
BACKBONES: Registry[Any] = Registry("backbone", "roli.backbones")
DATASETS: Registry[Any] = Registry("dataset", "roli.data")
CONVERTERS: Registry[Any] = Registry("checkpoint format", "roli.backbones.convert")
OBJECTIVES: Registry[Any] = Registry("training objective", "roli.objectives")
SCHEDULES: Registry[Any] = Registry("attack schedule", "roli.training.schedules")  # entries: config classes
