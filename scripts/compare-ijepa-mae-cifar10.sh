#!/usr/bin/env bash
# I-JEPA against MAE on real CIFAR-10, CPU-sized: the same ViT-Tiny (patch 4), the same
# number of steps, batch, optimizer and schedule, two seeds each; `selfsup probe` scores
# each run's evaluated encoder (I-JEPA: the target encoder, average-pooled; MAE: the
# encoder's class token) beside the same network at random initialisation, then
# `selfsup report` puts every run side by side. docs/ijepa.md has the numbers.
#
#   scripts/compare-ijepa-mae-cifar10.sh [DATA_ROOT] [OUT] [STEPS]
#   LR=2.5e-4 SEEDS=0 scripts/compare-ijepa-mae-cifar10.sh   # another base rate, one seed
#
# DATA_ROOT holds cifar10-jpeg/ (or cifar-10-batches-py/); about 35 minutes on 2 cores.
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-runs/ijepa-vs-mae}
STEPS=${3:-250}
LR=${LR:-2e-3}  # AdamW base rate per 256 images, both methods
SEEDS=${SEEDS:-0 1}
SELFSUP=${SELFSUP:-.venv/bin/selfsup}
CIFAR="$DATA/cifar10-jpeg"
[ -d "$CIFAR" ] || CIFAR="$DATA/cifar-10-batches-py"
[ -d "$CIFAR" ] || { echo "no cifar10-jpeg/ nor cifar-10-batches-py/ under $DATA" >&2; exit 2; }

# Shared by both methods: a short run's optimizer (the recipes' 40 warm-up epochs and
# MAE's 1.5e-4 are for 800-epoch runs), fp32 on the CPU, no online monitor.
COMMON=(
  "data.path=$CIFAR" data.batch_size=128 "train.max_steps=$STEPS" train.precision=fp32
  train.log_every=25 train.image_every=125 checkpoint.every_steps=125 "optim.base_lr=$LR"
  optim.warmup_epochs=0.1 monitor.enabled=false "probe.data_path=$DATA"
  "probe.datasets=[cifar10]" probe.train_samples=10000 probe.test_samples=5000 probe.epochs=50
)
# MAE's decoder at the predictor's scale (the recipe's 8 x 512 decoder is for GPUs).
MAE=(method.decoder_dim=128 method.decoder_depth=2 method.decoder_heads=4)

RUNS=()
for seed in $SEEDS; do
  "$SELFSUP" train configs/ijepa_vit_tiny_cifar10.yaml "${COMMON[@]}" "train.seed=$seed" \
    "run_dir=$OUT/ijepa-seed$seed"
  "$SELFSUP" train configs/mae_vit_tiny_cifar10.yaml "${COMMON[@]}" "${MAE[@]}" \
    "train.seed=$seed" "run_dir=$OUT/mae-seed$seed"
  RUNS+=("$OUT/ijepa-seed$seed" "$OUT/mae-seed$seed")
done
for run in "${RUNS[@]}"; do
  "$SELFSUP" probe "$run"
done
"$SELFSUP" report "${RUNS[@]}"
