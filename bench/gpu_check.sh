#!/usr/bin/env bash
# The device check, as one script: the training-step benchmark (all four
# workloads, eager, then the distillation pair compiled) and the 2:4 sparsity
# benchmark on the GPU.
# Copy its tables into BENCHMARKS.md with the date and the machine.
#
#   bash bench/gpu_check.sh            # on the GPU machine (about 6 minutes on an H200)
#   SMOKE=1 bash bench/gpu_check.sh    # tiny sizes on the CPU: checks the script runs
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SMOKE:-0}" = 1 ]; then
  sizes=(--smoke --steps 1 --rounds 1 --warmup 1)
  sparsity_sizes=(--smoke)
else
  sparsity_sizes=()
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  sizes=(--steps 10 --rounds 3 --warmup 3)
fi
date -u +"%Y-%m-%d %H:%M UTC"
python bench/train_step.py "${sizes[@]}"
python bench/train_step.py --workload distill --compile "${sizes[@]}"
python bench/sparsity.py "${sparsity_sizes[@]}"
