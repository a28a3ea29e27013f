"""``python -m liveact.eval <command> ...``."""

from __future__ import annotations

import importlib
import logging
import os
import sys

COMMANDS = {
    "train-reader": ("liveact.eval.reader", "train the avatar reader (mouth, eyes, accessories) metrics use"),
    "run": ("liveact.eval.runner", "sample a Nano model on held-out clips and print its metrics"),
    "ceiling": ("liveact.eval.ceiling", "lip-sync the data allows: renderer's opening, latent-group mean"),
    "actions": ("liveact.eval.actions", "do timed edit prompts show? per-action evidence vs ground truth"),
    "longrun": ("liveact.eval.longrun", "stream many minutes in one run: latency, memory, quality over time"),
    "longrun-plot": ("liveact.eval.longrun:plot_main", "plot longrun.json files of several runs in one PNG"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m liveact.eval <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<14} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(
        level=os.environ.get("LIVEACT_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    module, _, function = COMMANDS[argv[0]][0].partition(":")
    getattr(importlib.import_module(module), function or "main")(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
