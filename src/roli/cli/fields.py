"""`roli config [SECTION]`: every recipe field with its type, default and a one-line help taken from the schema's own
comments (the comment on the field's line, else the comment block right above it), so no user has to read config.py.

Sections are the recipe's top-level keys; `attack`, `eval.attack` and `transfer` also list the fields of every
registered attack or method (`transfer.lora`, `attack.autoattack` for one of them).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass

from roli.errors import ConfigError
from roli.numbers import eps_str, number_str

EPS_FIELDS = ("eps", "step_size")  # fields shown as k/255 (a budget or a PGD step)


@dataclass(frozen=True)
class FieldHelp:
    """One recipe field as `roli config` prints it."""

    key: str  # dotted, e.g. train.lr
    type: str
    default: str
    help: str


def type_name(tp) -> str:
    """A field's type as a recipe writer reads it: `linf|l2`, `float | None`, `tuple[int, ...]`."""
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(map(str, typing.get_args(tp)))
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "").replace("NoneType", "None")


def shown_default(name: str, f: dataclasses.Field) -> str:
    """The default as YAML would write it: 8/255 for a budget, 16 (not 16.0), null, or the nested section's name."""
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(v):
        return f"({getattr(v, 'name', type(v).__name__)} section)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and name in EPS_FIELDS:
        return eps_str(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(number_str(x) if not isinstance(x, str) else x for x in v) + "]"
    return number_str(v) if not isinstance(v, str) else v


def comments(cls: type) -> dict[str, str]:
    """field name -> its help: the comment on its line(s), else the comment lines right above it, in one line."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's own comment wins over its base's
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                out[node.target.id] = _comment_of(lines, node) or out.get(node.target.id, "")
    return out


def _comment_of(lines: list[str], node: ast.AnnAssign) -> str:
    """The trailing comment of a field's last line, else the block of comment lines just above its first line."""
    last = lines[node.end_lineno - 1]
    if "#" in last and not _in_string(last, last.index("#")):
        return last[last.index("#") + 1:].strip()
    above, i = [], node.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        above.insert(0, lines[i].strip().lstrip("#").strip())
        i -= 1
    return " ".join(above)


def _in_string(line: str, pos: int) -> bool:
    """Whether position `pos` of a line lies inside a quoted string (a `#` in a default like "a#b")."""
    quote = None
    for ch in line[:pos]:
        if ch in "\"'":
            quote = None if quote == ch else (quote or ch)
    return quote is not None


def section_fields(prefix: str, cls: type) -> list[FieldHelp]:
    """The fields of one config class under `prefix` (nested sections recurse), in declaration order."""
    hints, helps, out = typing.get_type_hints(cls), comments(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            out += section_fields(key, type(default))
            continue
        out.append(FieldHelp(key, type_name(hints[f.name]), shown_default(f.name, f), helps.get(f.name, "")))
    return out


def sections() -> dict[str, list[FieldHelp]]:
    """Every section roli config can print: the recipe's top-level keys, then each registered attack and method."""
    from roli.attacks import ATTACKS
    from roli.config import Config
    from roli.transfer import TRANSFER

    out: dict[str, list[FieldHelp]] = {}
    for f in dataclasses.fields(Config):
        if f.name in ("attack", "transfer"):
            continue
        out[f.name] = section_fields(f.name, type(f.default_factory()))
    for name in ATTACKS.names():
        out[f"attack.{name}"] = section_fields("attack", ATTACKS.get(name).config_cls)
    for name in TRANSFER.names():
        out[f"transfer.{name}"] = section_fields("transfer", TRANSFER.get(name).config_cls)
    return out


def render(wanted: str | None = None) -> str:
    """The listing of one section (`train`, `transfer.lora`, or `transfer`: every method), or of all of them."""
    found = sections()
    keys = list(found) if wanted is None else [k for k in found if k == wanted or k.startswith(f"{wanted}.")]
    if not keys:
        raise ConfigError(f"no config section {wanted!r}; choose one of {', '.join(found)}")
    lines = []
    for k in keys:
        lines.append(f"{k}:" if "." not in k else f"{k.split('.')[0]} (name: {k.split('.')[1]}):")
        width = max(len(f.key) for f in found[k])
        for f in found[k]:
            lines.append(f"  {f.key:<{width}}  {f.type} = {f.default}" + (f"  # {f.help}" if f.help else ""))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
