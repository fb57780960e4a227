#!/usr/bin/env bash
# Feature matching (ganfm's default loss) against the adversarial loss alone on real
# Fashion-MNIST: same architecture, same image budget, 3 seeds each; then evaluation and
# the table in README.md ("Does feature matching help?").
#
#   sudo apt-get install dataset-fashion-mnist
#   bash launch/experiments/fashion_mnist_fm_vs_adv.sh [OUT_DIR] [extra train.py flags]
#
# Environment: STEPS (default 3000), SEEDS (default "1 2 3"), NUM_SAMPLES (default 10000).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/fashion_fm_vs_adv}
shift || true
STEPS=${STEPS:-3000}
SEEDS=${SEEDS:-1 2 3}
NUM_SAMPLES=${NUM_SAMPLES:-10000}
COMMON=(
  --dataset=fashion_mnist --data_dir=/usr/share/datasets/fashion-mnist
  --g_filters=16 --d_filters=16 --batch_size=64 --train_steps="$STEPS"
  --steps_per_loop=100 --summary_every=1000 --checkpoint_every=1000
)
for seed in $SEEDS; do
  python train.py "${COMMON[@]}" --seed="$seed" --model_dir="$OUT/fm_s$seed" "$@"
  python train.py "${COMMON[@]}" --seed="$seed" --fm_weight=0 --model_dir="$OUT/adv_s$seed" "$@"
done
runs=()
for seed in $SEEDS; do runs+=("$OUT/fm_s$seed"); done
for seed in $SEEDS; do runs+=("$OUT/adv_s$seed"); done
for run in "${runs[@]}"; do
  python -m ganfm.evaluate --model_dir="$run" --num_samples="$NUM_SAMPLES" --inception_weights=none
  python -m ganfm.sample --model_dir="$run" --num=64 --seed=0 --output="$run/samples_seed0.png"
done
python -m ganfm.compare "${runs[@]}"
