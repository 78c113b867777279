#!/usr/bin/env bash
# The device check, as one script: every GPU figure of BENCHMARKS.md in one go.
#
#   bash bench/gpu_check.sh OUT            # on the GPU machine; under 8 minutes on an H200
#   SMOKE=1 bash bench/gpu_check.sh OUT    # tiny sizes on the CPU: checks the script runs
#
# In order of what matters most (a section that overruns its time budget is
# stopped, logged as TIMED OUT, and the script goes on: the budgets add up to
# 520 s (580 with two GPUs), so with the kit's set-up the run stays under 8 minutes; bench/e2e.py
# writes its JSON after each workload, so a cut keeps what it measured): end to end through the trainer with each loader
# (bench/e2e.py), the training step eager and compiled (bench/train_step.py,
# distillation included), the loaders (bench/loaders.py), checkpoints and the
# stall of a synchronous against a background one (bench/checkpoint.py),
# per-rank memory on fsdp vs ddp where two GPUs are visible (bench/engine_memory.py), a bf16 and an fp16 DeepSpeed step, 2:4 sparsity
# (bench/sparsity.py), the online monitor's cost (bench/monitor.py). OUT receives
# gpu_check.log and one JSON per section.
# Where lightly, submitit, deepspeed or ffcv are missing (the GPU machine's
# image), the device kit of ../shared/device (or a copy in .devkit/) sets
# them up first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu-check}")
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

check() {
missing=$(python -c "import importlib.util as u
print(' '.join(m for m in ('lightly', 'submitit', 'deepspeed', 'ffcv', 'omegaconf')
               if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
  kit=.devkit; [ -d "$kit" ] || kit=../shared/device
  echo "== setting up $missing from $kit"
  bash "$kit/setup.sh" && source /tmp/devkit-env.sh
fi

failed=0
section() {  # section NAME SECONDS COMMAND...: run with a time budget, keep going on failure
  local name=$1 budget=$2; shift 2
  [ "${SMOKE:-0}" = 1 ] && budget=600  # the CPU check: nothing may time out
  echo; echo "== $name (budget ${budget}s)"; local started=$SECONDS
  timeout --kill-after=10 "$budget" "$@"; local rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then echo "== $name: TIMED OUT after ${budget}s";
    [ "${SMOKE:-0}" = 1 ] && failed=$((failed + 1));
  elif [ $rc != 0 ]; then echo "== $name: FAILED (exit $rc)"; failed=$((failed + 1));
  else echo "== $name: done in $((SECONDS - started))s"; fi
}

# SMOKE keeps the CPU check short: the eager step for the distillation pair, the loaders that decode on the device (ffcv's own run in e2e), no
# DeepSpeed rows (its engine's tests run it on the CPU; here they differ in two settings).
if [ "${SMOKE:-0}" = 1 ]; then
  step=(--smoke --steps 1 --rounds 1 --warmup 1)
  eager=(--workload distill)
  e2e=(--smoke --window 1 --windows 1 --cache "$out/cache")
  loaders=(--data "$out/cache/tiny" --image-size 32 --batch-size 8 --batches 2 --warmup 1
           --workers 1 --cache "$out/cache" --only "selfsup memory,selfsup ffcv + device decode")
  checkpoint=(--backbone resnet18 --repeat 1 --stall-backbones resnet18)
  deepspeed_precisions=()
  sparsity=(--smoke)
  monitor=(--smoke --steps 4 --every 2)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  step=(--steps 10 --rounds 2 --warmup 3)
  eager=()
  compiled=()
  e2e=(--window 10 --windows 2)
  loaders=(--data ../shared/data/imagenette --image-size 224 --batch-size 256 --batches 20 --warmup 5)
  checkpoint=(--repeat 2)
  deepspeed_precisions=(bf16 fp16)
  sparsity=()
  monitor=(--data ../shared/data/cifar10-jpeg --steps 30 --every 10)
fi
date -u +"%Y-%m-%d %H:%M UTC"

e2e_rows() {
  section "e2e: selfsup train with each loader vs ceiling vs lightly-style" 240 \
    python bench/e2e.py "${e2e[@]}" --json "$out/e2e.json"
}
train_steps() {
  section "train step, eager" 40 python bench/train_step.py ${eager[@]+"${eager[@]}"} "${step[@]}"
  # Not in SMOKE: compiling on 2 CPU cores takes longer than the rest of the check; the
  # trainer's compiled path has its own test (tests/pipelines/train/test_trainer.py).
  [ "${SMOKE:-0}" = 1 ] || section "train step, compiled" 60 python bench/train_step.py \
    --compile ${compiled[@]+"${compiled[@]}"} "${step[@]}"
}
loaders_rows() {
  section "loaders" 30 python bench/loaders.py "${loaders[@]}" --json "$out/loaders.json"
}
the_rest() {
  section "checkpoint, synchronous and background" 30 python bench/checkpoint.py \
    "${checkpoint[@]}"
  # Sharding needs two GPUs or more: per-rank memory, FSDP against DDP, ViT-B.
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
  if [ "${SMOKE:-0}" != 1 ] && [ "$gpus" -ge 2 ]; then
    section "per-rank memory, fsdp vs ddp" 60 python bench/engine_memory.py --device cuda \
      --ranks 2
  fi
  for precision in ${deepspeed_precisions[@]+"${deepspeed_precisions[@]}"}; do
    section "DeepSpeed ZeRO-2 step, $precision" 20 python bench/e2e.py "${e2e[@]}" \
      --workload r18_224 --rows memory --engine deepspeed --precision "$precision" \
      --json "$out/deepspeed-$precision.json"
  done
  section "2:4 sparsity" 20 python bench/sparsity.py "${sparsity[@]}" --json "$out/sparsity.json"
  section "online monitor: cost against the unmonitored run" 60 python bench/monitor.py \
    "${monitor[@]}" --json "$out/monitor.json"
}

if [ "${SMOKE:-0}" = 1 ]; then
  # The CPU check: the e2e rows (mostly Python start-up at these sizes) run beside the
  # sections that do not read their data; their log follows when they are done. The
  # loaders come last: they read the tiny folder and .beton the e2e rows write.
  (e2e_rows; exit "$failed") > "$out/e2e-section.log" 2>&1 &
  e2e_pid=$!
  train_steps
  the_rest
  wait "$e2e_pid" || failed=$((failed + 1))
  cat "$out/e2e-section.log"
  loaders_rows
else
  e2e_rows
  train_steps
  loaders_rows
  the_rest
fi
echo; echo "gpu_check: $failed section(s) failed; log and JSON in $out"
return $failed
}

check 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
