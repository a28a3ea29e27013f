"""The layering of docs/ARCHITECTURE.md, checked on the source: a module imports only its own layer or
those below it, and the product surfaces are imported by no library module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "liveact"

# Bottom to top. A module's layer is its first match (a folder, or a module of the flat core).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("config", "userinput", "video", "hostmem", "rope", "attention", "islands")),
    ("core", ("memory", "model", "loading", "sampler")),
    ("components", ("components",)),
    ("speed", ("speed",)),
    ("pipeline", ("pipeline", "live")),
    ("runtime", ("runtime",)),
    ("surfaces", ("cli", "__main__", "serve", "bench", "eval", "train")),
]


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of ``liveact.<module...>``."""
    head = module.split(".")[1] if "." in module else "__init__"
    for index, (_, members) in enumerate(LAYERS):
        if head in members:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")


def liveact_imports(path: Path) -> list[str]:
    """Every ``liveact.*`` module ``path`` imports (module level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("liveact.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("liveact"):
            found += [node.module] if node.module != "liveact" else [f"liveact.{a.name}" for a in node.names]
    return found


def modules() -> list[tuple[str, Path]]:
    """``(dotted name, path)`` of every module of the package but ``__init__`` files."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] != "__init__":
            out.append((".".join(parts), path))
    return out


def test_every_import_goes_down_or_sideways() -> None:
    upward = []
    for name, path in modules():
        mine = layer_of(name)
        for target in liveact_imports(path):
            if layer_of(target) > mine:
                upward.append(f"{name} ({LAYERS[mine][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_command_lines_are_imported_by_no_library_module() -> None:
    for name, path in modules():
        if name.split(".")[1] in ("cli", "__main__"):
            continue
        assert "liveact.cli" not in liveact_imports(path), f"{name} imports liveact.cli"
