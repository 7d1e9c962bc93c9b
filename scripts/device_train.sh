#!/usr/bin/env bash
# Train the next photo denoiser on a lent GPU in one call of the device tool, and bring its weights back.
#
#   python scripts/device_stage.py          # here, once: writes .device/ and checks that the call fits
#   device tool: run(command="bash scripts/device_train.sh", carry=[".device"], timeout_s=560)
#
# On the GPU machine: unpacks .device/site.tar.xz (diffusers, pydantic) for its Python, points
# scripts/fetch_photos.py at the staged photos (PHOTOS_DIR), trains for TRAIN_SECONDS of wall time (default
# 400: a call has at most 10 minutes, a session 15 minutes of device time, the machine's start included), and
# writes under $OUT the log and the trained model folder as a tar in parts of at most 15 MiB (files come back
# up to 16 MiB each):
#
#   cat <files_at>/photos-next.tar.part-* | tar -x -C <folder>     # here: <folder>/photos, a model folder
#
# The run is the candidate of docs/denoising.md ("Capacity where it costs little", "Prepared for a lent
# GPU"): the shipped network folded 2x2 with one more level (s2d 32/64/128/128), cheaper in float32 on the
# CPU, taught half by the shipped model and half by the drawn noise (so it can pass its teacher). TRAIN_ARGS
# replaces its options; OUT and TRAIN_SECONDS may be set for a dry run on a CPU (python3 must then have torch).
set -euo pipefail
: "${OUT:?set OUT: the folder whose files come back (the device tool sets it)}"
TRAIN_SECONDS="${TRAIN_SECONDS:-400}"
TRAIN_ARGS="${TRAIN_ARGS:---space-to-depth 2 --add-levels 1 --distill-from model_store/photos --distill-weight 0.5 \
--crop 128 --batch 64 --lr 1e-3 --uniform-sigma 8 20 --seed 41}"
cd "$(dirname "$0")/.."
log="$OUT/train.log"
site="$(mktemp -d)"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    .device/site.tar.xz "$site"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
export PHOTOS_DIR=.device/photos  # scripts/fetch_photos.py reads the staged photos there
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: a dry run"; } | tee "$log"
python3 -c "import torch, diffusers, pydantic; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
    | tee -a "$log"
work="$(mktemp -d)"
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
python3 scripts/train_denoiser.py --init-from model_store/photos $TRAIN_ARGS --upload-from 0 --precision bf16 \
    --iters 1000000 --stop-after "$TRAIN_SECONDS" --ckpt-every 1000 --ckpt-dir "$work/ckpt" \
    --out "$work/model/photos" 2>&1 | tr '\r' '\n' | tee -a "$log"
tar -C "$work/model" -cf "$work/photos-next.tar" photos
split -b 15m "$work/photos-next.tar" "$OUT/photos-next.tar.part-"
ls -l "$OUT" | tee -a "$log"
