"""Strict YAML for recipes and `--set` values (ground floor: imports only roli.errors): yaml.SafeLoader (no python
tags) that also refuses a key given twice, an alias that holds itself or expands beyond reason, and values a
standard tag cannot build (`2001-02-30`); each failure is one ConfigError naming where. And `shown`, a value as an
error message quotes it: short, and safe to compute for any value.
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml

from roli.errors import ConfigError


def shown(value: Any, limit: int = 80) -> str:
    """`value` for an error message: its repr cut to `limit` characters; an integer of many digits by its size (the
    repr of one with more than 4300 digits would raise)."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"{'-' if value < 0 else ''}an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    short = reprlib.Repr()  # bounded work too: a list that aliases nest a billion times is not expanded
    short.maxstring = short.maxother = limit
    short.maxlevel, short.maxlist, short.maxdict = 3, 6, 6
    try:
        text = short.repr(value)
    except (ValueError, RecursionError):  # an integer of more than 4300 digits inside the value
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader (standard tags only: a python/... tag is an error) whose mappings refuse a key given twice,
    which YAML would silently resolve to the last value."""

    @classmethod
    def load(cls, text: str) -> Any:
        """The one document in `text` (what `yaml.load(text, Loader=cls)` does)."""
        loader = cls(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of `node`; ConfigError naming the key and both lines if one appears twice (`<<` merges and
        the keys that override them are not duplicates)."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if twice:
                raise ConfigError(f"key {shown(key, 40)} is given twice in one mapping (lines {seen[key]} and "
                                  f"{line}); YAML would silently keep the last value: keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


MAX_VALUES = 100_000  # a recipe holds hundreds of values; more means aliases nested in aliases ("billion laughs")


def _check_tree(data: Any, where: str) -> None:
    """Refuse YAML whose aliases form a cycle (`a: &x {b: *x}`) or expand to more than MAX_VALUES values."""
    count, ancestors = 0, set()

    def walk(node: Any) -> None:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{where}: not valid as a recipe: its aliases expand to more than {MAX_VALUES} values; "
                              "write the values out")
        if isinstance(node, (dict, list)):
            if id(node) in ancestors:
                raise ConfigError(f"{where}: not valid as a recipe: an alias refers to a mapping or list that holds "
                                  "it (e.g. `a: &x {b: *x}`), which has no end; write the values out")
            ancestors.add(id(node))
            for child in node.values() if isinstance(node, dict) else node:
                walk(child)
            ancestors.discard(id(node))

    try:
        walk(data)
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None


def load_yaml(text: str, where: str) -> Any:
    """`text` parsed by the strict loader; every way it can fail is a ConfigError naming `where`."""
    try:
        data = _StrictLoader.load(text)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    except (ValueError, TypeError, OverflowError) as e:  # a standard tag's bad value: 2001-02-30, !!float abc
        raise ConfigError(f"{where}: not valid YAML: {e} (YAML reads the value as a date, a number or a tagged "
                          "value: quote it if it is text)") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None
    _check_tree(data, where)
    return data
