"""``python -m liveact.bench``."""

from liveact.bench.cli import main

main()
