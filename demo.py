"""LiveAct web studio and HTTP API (the authors' demo.py flags, plus --host/--data_dir).

python demo.py --ckpt_dir CKPT --wav2vec_dir W2V          # then open http://127.0.0.1:5001/
torchrun --nproc_per_node=2 demo.py ...                    # rank 0 serves, the others follow
"""

import sys

from liveact.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
