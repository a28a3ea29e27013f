"""Generate talking-human videos with LiveAct (drop-in for SoulX-LiveAct's generate.py).

python generate.py --ckpt_dir CKPT --wav2vec_dir W2V --input_json examples/example.json
torchrun --nproc_per_node=2 generate.py ...
"""

import sys

from liveact.cli import main

if __name__ == "__main__":
    sys.exit(main())
