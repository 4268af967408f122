"""Fail when a function outside the tests is longer than the limit (default 60 lines).

Usage: python tools/check_function_length.py [--max N] PATH...  (files or directories)
A long function usually holds several jobs; split it where the jobs meet.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path


def long_functions(path: Path, limit: int) -> Iterator[tuple[int, str, int]]:
    """(line, qualified name, length) of every function in ``path`` over ``limit`` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            name = getattr(child, "name", "")
            qualified = f"{prefix}{name}" if name else prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > limit:
                    yield child.lineno, qualified, length
            nested = f"{qualified}." if name else prefix
            stack.append((child, nested))


def python_files(paths: list[str]) -> Iterator[Path]:
    for given in map(Path, paths):
        yield from sorted(given.rglob("*.py")) if given.is_dir() else [given]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=60, help="longest allowed function (60)")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    found = [
        f"{path}:{line}: {name} is {length} lines (limit {args.max})"
        for path in python_files(args.paths)
        for line, name, length in long_functions(path, args.max)
    ]
    print("\n".join(found) if found else f"no function over {args.max} lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
