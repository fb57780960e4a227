#!/usr/bin/env bash
# Trains on every GPU of this machine with MirroredStrategy (choose GPUs with
# CUDA_VISIBLE_DEVICES). --batch_size is the global batch: a multiple of the GPU count.
#
#   bash launch/local_gpus.sh --batch_size=256 --model_dir=runs/gpus [more train.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" train.py --strategy=mirrored "$@"
