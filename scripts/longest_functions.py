"""The longest functions of a package, from `def` to the body's last line: `python scripts/longest_functions.py
[PACKAGE [N]]` (default: worker, 10). A yardstick for reviews, not a rule."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def longest(root: Path) -> list[tuple[int, str]]:
    rows: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        pending: list[tuple[ast.AST, str]] = [(ast.parse(path.read_text(encoding="utf-8")), "")]
        while pending:
            node, prefix = pending.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    rows.append((length, f"{path}:{child.lineno} {prefix}{child.name}"))
                    pending.append((child, f"{prefix}{child.name}."))
                elif isinstance(child, ast.ClassDef):
                    pending.append((child, f"{prefix}{child.name}."))
    return sorted(rows, reverse=True)


if __name__ == "__main__":
    package = Path(sys.argv[1] if len(sys.argv) > 1 else "worker")
    for length, name in longest(package)[: int(sys.argv[2]) if len(sys.argv) > 2 else 10]:
        print(f"{length:4d}  {name}")
