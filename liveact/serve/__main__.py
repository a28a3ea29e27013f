"""``python -m liveact.serve``: the demo server."""

import sys

from liveact.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
