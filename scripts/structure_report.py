"""Structure of the ``liveact`` package, from its source: modules and lines per folder, import circles,
imports inside functions, the longest functions.

    python scripts/structure_report.py            # this checkout
    python scripts/structure_report.py --root DIR # another checkout (e.g. a git worktree of an old commit)

An import circle is a strongly connected group of modules that import each other at module level or
inside functions (both count: an in-function import that dodges a circle is still one).
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter, defaultdict
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """``liveact/components/vae.py`` -> ``liveact.components.vae`` (packages by their ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, known: set[str], package: str) -> list[tuple[str, bool]]:
    """``(module, inside a function)`` for every import of a module in ``known``."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names if a.name in known)
            elif isinstance(child, ast.ImportFrom) and child.module is not None:
                base = child.module
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base])
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    if target in known:
                        found.append((target, inside))
                    elif base in known:
                        found.append((base, inside))
            visit(child, inside)

    visit(tree, False)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def main() -> None:
    """Print the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--top", type=int, default=8, help="longest functions to list")
    args = p.parse_args()
    files = sorted((args.root / "liveact").rglob("*.py"))
    names = {module_name(f, args.root): f for f in files}
    known = set(names)
    graph: dict[str, set[str]] = defaultdict(set)
    in_function = 0
    lines_per_folder: Counter[str] = Counter()
    modules_per_folder: Counter[str] = Counter()
    functions: list[tuple[int, str]] = []
    for name, path in names.items():
        text = path.read_text()
        tree = ast.parse(text)
        folder = str(path.parent.relative_to(args.root))
        lines_per_folder[folder] += len(text.splitlines())
        modules_per_folder[folder] += 1
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target, inside in imported_modules(tree, known, package):
            if target != name:
                graph[name].add(target)
                in_function += inside
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    print("modules and lines per folder:")
    for folder in sorted(lines_per_folder):
        print(f"  {folder:24s} {modules_per_folder[folder]:3d} modules {lines_per_folder[folder]:6d} lines")
    found = circles(graph)
    print(f"import circles: {len(found)}")
    for group in found:
        print("  " + " <-> ".join(group))
    print(f"imports of liveact modules inside functions: {in_function}")
    print("longest functions (lines):")
    for length, name in sorted(functions, reverse=True)[: args.top]:
        print(f"  {length:4d} {name}")


if __name__ == "__main__":
    main()
