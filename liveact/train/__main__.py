"""``python -m liveact.train <command> ...``: one entry point for every trainer and data tool."""

from __future__ import annotations

import importlib
import logging
import os
import sys

COMMANDS = {
    "autoencoder": ("liveact.train.autoencoder", "train the tiny causal autoencoder"),
    "autoencoder-report": (
        "liveact.train.autoencoder:report_main",
        "held-out PSNR, mouth PSNR and mouth motion of exported autoencoders",
    ),
    "data": ("liveact.train.data", "render and encode synthetic clips into training shards"),
    "stage1": ("liveact.train.stage1", "train the DiT with Neighbor (or Diffusion / Teacher) Forcing"),
    "stage2": (
        "liveact.train.stage2",
        "distil to the 3-step sampler on rollouts with the ConvKV memory (DMD)",
    ),
    "package": ("liveact.train.package", "assemble a self-contained Nano folder (liveact/assets/nano)"),
    "plot": ("liveact.train.plots", "plot loss / validation curves of runs to a PNG"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m liveact.train <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<19} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(
        level=os.environ.get("LIVEACT_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    module, _, function = COMMANDS[argv[0]][0].partition(":")
    getattr(importlib.import_module(module), function or "main")(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
