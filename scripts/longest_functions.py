"""The ten longest functions of a package (lines from `def` to the last line of the body)."""
import ast, pathlib, sys
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "worker")
rows = []
for path in root.rglob("*.py"):
    tree = ast.parse(path.read_text())
    stack = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([d.lineno for d in child.decorator_list] + [child.lineno])
                rows.append((child.end_lineno - child.lineno + 1, f"{path}:{child.lineno} {prefix}{child.name}"))
                stack.append((child, f"{prefix}{child.name}."))
            elif isinstance(child, ast.ClassDef):
                stack.append((child, f"{prefix}{child.name}."))
for n, name in sorted(rows, reverse=True)[: int(sys.argv[2]) if len(sys.argv) > 2 else 10]:
    print(f"{n:4d}  {name}")
