"""``python -m liveact``: what LiveAct installs and how to run each part.

    python -m liveact                      # this help: the commands and their console scripts
    python -m liveact generate --help      # the same as liveact-generate --help / python generate.py --help

Each command is a ``[project.scripts]`` console script of pyproject.toml, named ``liveact-<command>``
(``liveact-generate`` -> ``liveact.cli:main``). Adding one is a line there and a line in ``COMMANDS``;
``tests/test_entry_points.py`` checks that the two lists agree.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# command -> (module:function, what it does); the console script is "liveact-<command>".
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "liveact.cli:main",
        "generate talking-human mp4s from an input JSON (the authors' generate.py)",
    ),
    "demo": (
        "liveact.serve.cli:main",
        "the live web studio: upload a portrait, speak or type, watch it stream (the authors' demo.py)",
    ),
}
# Modules run with ``python -m`` that are tools rather than console scripts.
TOOLS: dict[str, str] = {
    "liveact.bench": "benchmarks: flops, load (host RAM plan), speed (every stage and the real-time factor)",
    "liveact.train": "train LiveAct-Nano: data, autoencoder, stages, packaging (docs/TRAINING.md)",
    "liveact.eval": "metrics: lip-sync and identity, timed-action checks, long-run latency and memory",
}


def resolve(target: str) -> Callable[..., object]:
    """``"package.module:function"`` -> the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    """The help text: commands with their console scripts, then the ``python -m`` tools."""
    width = max(len(f"liveact-{c}") for c in COMMANDS)
    lines = [
        "LiveAct: real-time streaming audio-driven talking-human video.",
        "",
        "Commands (console script, or python -m liveact COMMAND ...):",
    ]
    lines += [f"  {'liveact-' + name:{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Tools (python -m MODULE --help):"]
    lines += [f"  python -m {module}  {help_}" for module, help_ in TOOLS.items()]
    lines += ["", "Add --help after any command for its flags. Set-up and weights: README.md."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the help, or run ``COMMAND`` with the remaining arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    result = resolve(COMMANDS[command][0])(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
