"""The house's measurable rules, counted on src/roli: file sizes, function lengths, docstrings, import circles.

    python scripts/house.py            # the numbers
    python scripts/house.py --list     # and every offender

Function length counts *code* lines: not blank, not a comment, not the docstring. Public names are module-level
functions and classes, and methods of public classes, whose name has no leading underscore. The import graph holds
every `roli` import, at module level or inside a function; a circle is a strongly connected set of two or more
modules. tests/test_house.py holds the package to the same rules with this file's functions.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "roli"
LONG_FILE, VERY_LONG_FILE, LONG_FUNCTION = 300, 400, 50


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (roli.report.stats -> its path)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def code_lines(node: ast.AST, source: list[str]) -> int:
    """Lines of a function that hold code: not blank, not only a comment, not its docstring."""
    body = node.body
    doc = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    count = 0
    for i in range(node.lineno, node.end_lineno + 1):
        text = source[i - 1].strip()
        if text and not text.startswith("#") and i not in doc:
            count += 1
    return count


def long_functions(src: Path = SRC, limit: int = LONG_FUNCTION) -> list[tuple[str, int]]:
    """(module:function, code lines) for every function over `limit` code lines."""
    out = []
    for name, path in modules(src).items():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := code_lines(node, lines)) > limit:
                out.append((f"{name}:{node.name}", n))
    return sorted(out, key=lambda t: -t[1])


def _public_defs(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                        yield f"{node.name}.{sub.name}", sub


def undocumented(src: Path = SRC) -> list[str]:
    """Public names (see the module docstring) without a docstring, as module:name."""
    out = []
    for name, path in modules(src).items():
        for qual, node in _public_defs(ast.parse(path.read_text())):
            if not ast.get_docstring(node):
                out.append(f"{name}:{qual}")
    return out


def public_count(src: Path = SRC) -> int:
    """How many public names there are (the denominator of `undocumented`)."""
    return sum(1 for p in modules(src).values() for _ in _public_defs(ast.parse(p.read_text())))


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the roli modules it imports (anywhere in the file), each reduced to a module that exists."""
    mods = modules(src)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(name, node, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" for a in node.names] + [base] if base else []
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t.startswith("roli") and t != name:
                    found.add(t)
        graph[name] = found
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of two or more modules (Tarjan), packages' own __init__ edges left out."""
    def real(a: str, b: str) -> bool:  # a package importing its own submodule (or vice versa) is no circle
        return not (b.startswith(a + ".") or a.startswith(b + "."))

    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in (w for w in graph.get(v, ()) if real(v, w)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def file_sizes(src: Path = SRC) -> dict[str, int]:
    """Lines per module."""
    return {name: len(path.read_text().splitlines()) for name, path in modules(src).items()}


def main(argv: list[str] | None = None) -> int:
    """Print the numbers (and with --list, the offenders)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="also list every offender")
    a = p.parse_args(argv)
    sizes = file_sizes()
    over300 = {k: v for k, v in sizes.items() if v > LONG_FILE}
    over400 = {k: v for k, v in sizes.items() if v > VERY_LONG_FILE}
    longf, undoc, circ = long_functions(), undocumented(), circles(import_graph())
    print(f"modules: {len(sizes)}, lines: {sum(sizes.values())}")
    print(f"files > {LONG_FILE} lines: {len(over300)}; > {VERY_LONG_FILE}: {len(over400)}")
    print(f"functions > {LONG_FUNCTION} code lines: {len(longf)}")
    print(f"public names without a docstring: {len(undoc)} of {public_count()}")
    print(f"import circles: {len(circ)}")
    if a.list:
        for k, v in sorted(over300.items(), key=lambda t: -t[1]):
            print(f"  file {k}: {v}")
        for k, v in longf:
            print(f"  function {k}: {v}")
        for c in circ:
            print(f"  circle {' <-> '.join(c)}")
        for u in undoc:
            print(f"  undocumented {u}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
