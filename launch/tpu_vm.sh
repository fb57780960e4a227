#!/usr/bin/env bash
# Cloud TPU VM: create it, copy this repository, install TensorFlow for TPUs, train.
#
#   TPU_NAME=ganfm ZONE=us-central1-b ACCELERATOR=v3-8 \
#     bash launch/tpu_vm.sh --model_dir=gs://YOUR_BUCKET/runs/ganfm --batch_size=1024
#
# PyPI's tensorflow-tpu stops at 2.20, so the VM gets TensorFlow 2.20 (ganfm supports
# 2.20 and 2.21). Single-host TPUs only (v2-8, v3-8, v4-8, ...), run with --tpu=local;
# pod slices need Cloud TPU's own TensorFlow pod setup and are refused here. No TPU
# was available to test this script; the code path it runs is tested on the CPU.
# Set SKIP_CREATE=1 to reuse an existing TPU VM.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
accelerator=${ACCELERATOR:-v3-8}
if [ "${accelerator##*-}" -gt 8 ]; then
  echo "tpu_vm.sh: $accelerator is a pod slice; this script runs single-host TPUs (…-8)" >&2
  exit 2
fi
version=${TPU_SOFTWARE:-tpu-ubuntu2204-base}
tf_version=${TF_VERSION:-2.20.0}
cd "$(dirname "$0")/.."

if [ "${SKIP_CREATE:-0}" != 1 ]; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$accelerator" --version="$version"
fi
archive=$(mktemp -d)/ganfm.tar.gz
git diff --quiet HEAD || echo "tpu_vm.sh: note: uncommitted changes are not copied" >&2
git archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":~/ganfm.tar.gz --zone="$ZONE"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --command="
  set -e; mkdir -p ganfm && tar -xzf ganfm.tar.gz -C ganfm && cd ganfm &&
  pip install 'tensorflow-tpu==$tf_version' \
    -f https://storage.googleapis.com/libtpu-tf-releases/index.html &&
  grep -v '^tensorflow>=' requirements.txt | pip install -r /dev/stdin"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --command="
  cd ganfm && python3 train.py --strategy=tpu --tpu=local $(printf '%q ' "$@")"
