#!/usr/bin/env bash
# The whole LiveAct-Nano recipe, from nothing to liveact/assets/nano. Every command is resumable: run
# this script again after an interruption and each stage continues where it stopped (finished stages
# are skipped). Budgets are for a 2-core CPU; docs/TRAINING.md gives the measured wall times.
#
#   bash scripts/train_nano.sh            # runs/ holds everything; ~10 h on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs}
T="python -m liveact.train"

# 1. The tiny autoencoder (renders its own frame pool), then its latents are frozen for the DiT.
[ -f $R/tae/tae.safetensors ] || $T autoencoder --out $R/tae --steps 7000 --batch 6 --encoder_widths 16 16 16 --init default
[ -f $R/tae_frozen.safetensors ] || cp $R/tae/tae.safetensors $R/tae_frozen.safetensors

# 2. Training and held-out shards (2000 + 64 three-block clips; held-out voices and sentences).
$T data --tae $R/tae_frozen.safetensors --out $R/data_val --clips 64 --shard 32 --held_out --seed 50000000
$T data --tae $R/tae_frozen.safetensors --out $R/data --clips 2000 --shard 100

# 3. Stage 1: Neighbor Forcing from scratch.
$T stage1 --data $R/data --val $R/data_val --out $R/stage1 --steps 6000 --batch 4

# 4. The reader the metrics use (renders + decoded frames).
[ -f $R/reader/reader.safetensors ] || python -m liveact.eval train-reader --out $R/reader --autoencoder $R/tae_frozen.safetensors

# 5. Stage 2: distillation to the 3-step sampler with the ConvKV memory.
$T stage2 --teacher $R/stage1/model --data $R/data --val $R/data_val --out $R/stage2 --objective dmd --steps 1000

# 6. A sharper decoder for the same latents (encoder frozen), then the shipped folder.
$T autoencoder --out $R/tae_decoder --start_from $R/tae_frozen.safetensors --freeze_encoder --steps 3000 --batch 6
python -m liveact.train package --model $R/stage2/model --tae $R/tae_decoder/tae.safetensors --out liveact/assets/nano
