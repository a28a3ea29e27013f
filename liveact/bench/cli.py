"""``python -m liveact.bench``: the subcommands of ``cpu`` (flops, load, speed) and ``gpu``.

``cpu.SUBCOMMANDS`` maps name -> (help, add arguments, run): adding one is a function pair and one
entry; ``gpu`` adds its own subparser.
"""

from __future__ import annotations

import argparse

from liveact.bench import cpu, gpu


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m liveact.bench",
        description=cpu.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments, _) in cpu.SUBCOMMANDS.items():
        formatter = argparse.ArgumentDefaultsHelpFormatter
        add_arguments(sub.add_parser(name, help=help_, formatter_class=formatter))
    gpu.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "gpu":
        gpu.run_command(args)
    else:
        cpu.SUBCOMMANDS[args.command][2](args)
