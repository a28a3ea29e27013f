#!/usr/bin/env bash
# The whole LiveAct-Nano recipe, from nothing to liveact/assets/nano. Every command is resumable: run
# this script again after an interruption and each stage continues where it stopped (finished stages
# are skipped). Budgets are for a 2-core CPU; docs/TRAINING.md gives the measured wall times.
#
#   bash scripts/train_nano.sh            # runs/ holds everything; about 12 h on 2 cores (docs/TRAINING.md)
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
$T stage1 --data $R/data --val $R/data_val --out $R/stage1 --steps 2800 --batch 4 --snapshot_every 700

# 3b. Lip-sync: the mouth's position per frame in the shards (only needed for shards built before it
#     existed; nothing is re-encoded), then stage 1 fine-tuned with the mouth's latent cells weighted.
$T data --out $R/data_val --add_mouth_xy --held_out
$T data --out $R/data --add_mouth_xy
$T stage1 --data $R/data --val $R/data_val --out $R/stage1_mouth --init_from $R/stage1/model --mouth_weight 10 --steps 1200 --lr 1e-4 --warmup 50 --batch 4 --val_every 200 --snapshot_every 400
#     A second cosine cycle of the same fine-tune: the best teacher (lip-sync 0.534 with guidance 3).
$T stage1 --data $R/data --val $R/data_val --out $R/stage1_mouth2 --init_from $R/stage1_mouth/model --mouth_weight 10 --steps 1200 --lr 1e-4 --warmup 50 --batch 4 --val_every 200 --snapshot_every 400
#     The decoder fine-tuned on the mouth (encoder frozen: same latents), used with the teacher.
[ -f $R/tae_mouth/tae.safetensors ] || $T autoencoder --out $R/tae_mouth --start_from $R/tae_frozen.safetensors --freeze_encoder --mouth_weight 10 --steps 3000 --pool 600 --batch 6 --lr 3e-4 --val_every 250 --init default

# 4. The reader the metrics use (renders + decoded frames).
[ -f $R/reader/reader.safetensors ] || python -m liveact.eval train-reader --out $R/reader --steps 4000 --clips 600 --autoencoder $R/tae_frozen.safetensors

# 5. Stage 2 of the second recipe (the student shipped before tae_v2): mouth-weighted regression on its
#    own rollouts with the ConvKV memory (--objective dmd is the paper's, about 50 s per step on 2 cores).
$T stage2 --teacher $R/stage1_mouth/model_step400 --data $R/data --val $R/data_val --out $R/stage2_mouth --objective regress --mouth_weight 10 --steps 300 --minutes 25 --lr 5e-5 --warmup 20

# 6. The third recipe (what ships): an autoencoder that keeps the mouth's movement inside a latent
#    frame (wider encoder, from scratch, mouth and colour terms), every clip re-encoded with it, stage 1
#    fine-tuned from the second recipe's teacher into the new latent space, the student distilled from
#    its step-1400 snapshot.
[ -f $R/tae_v2/tae.safetensors ] || $T autoencoder --out $R/tae_v2 --steps 7000 --batch 6 --encoder_widths 16 32 64 --init default --mouth_weight 10 --colour_weight 1 --pool 1200
$T data --tae $R/tae_v2/tae.safetensors --out $R/data_val_v2 --clips 64 --shard 32 --held_out --seed 50000000 --workers 2
$T data --tae $R/tae_v2/tae.safetensors --out $R/data_v2 --clips 2000 --shard 100 --workers 2
$T stage1 --data $R/data_v2 --val $R/data_val_v2 --out $R/stage1_v2init --init_from $R/stage1_mouth2/model --steps 2200 --lr 2e-4 --warmup 100 --batch 4 --mouth_weight 10 --val_every 200 --snapshot_every 700
$T stage2 --teacher $R/stage1_v2init/model_step1400 --data $R/data_v2 --val $R/data_val_v2 --out $R/stage2_v2 --objective regress --mouth_weight 10 --steps 300 --minutes 25 --lr 5e-5 --warmup 20

# 7. The shipped folder (edit guidance 5), and the model card's metrics.
python -m liveact.train package --model $R/stage2_v2/model --tae $R/tae_v2/tae.safetensors --out liveact/assets/nano --edit_cfg 5
python -m liveact.eval run --model $R/stage2_v2/model --tae $R/tae_v2/tae.safetensors --data $R/data_val_v2 --clips 16 --edit_cfg 5
python -m liveact.eval run --model $R/stage1_v2init/model --tae $R/tae_v2/tae.safetensors --data $R/data_val_v2 --clips 16 --steps 20 --audio_cfg 3
python -m liveact.eval run --model $R/stage1_v2init/model --tae $R/tae_v2/tae.safetensors --data $R/data_val_v2 --clips 16 --ground_truth
python -m liveact.eval ceiling --data $R/data_val_v2 --clips 64
