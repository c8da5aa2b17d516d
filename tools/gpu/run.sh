#!/usr/bin/env bash
# Runs on the GPU machine (the device tool), from the repository root, with .gpu/ carried from
# tools/gpu/build.sh. Three steps, in order of value, each under its own time limit and all
# under one deadline, so that one command fits the device tool (at most 600 s a command, 15
# minutes of device time in all, 8 files back):
#
#   tests  the kernels against their CPU twins and every fixture end to end (the test
#          binaries; MOE_REQUIRE_CUDA=1: no GPU is a failure, not a skip; MOE_CUDA_POISON=1:
#          kernel outputs start as NaN, so an unwritten element shows)             ~1-2 min
#   bench  one MoE layer, ours against candle-transformers' FusedMoe (criterion, bf16), then
#          whole models with random weights made on the GPU, q3-mini and the Qwen3-30B-A3B
#          shape: decode at batch 1, 8, 32 after a 512-token prompt (one process, one model)
#          and prefill of 4096, with NVML energy (`moe bench --json`)              ~4 min
#   hf     HF transformers + PyTorch on the same shapes (tools/gpu/hf_baseline.py), same
#          energy counter                                                          ~2 min
#
#   STEPS=tests,bench,hf DEADLINE=520 bash tools/gpu/run.sh     # the defaults
#
# A step starts only with at least 30 s left before DEADLINE (seconds from the start) and is
# cut at it. $OUT gets summary.txt (also printed last), both engines' JSON lines and every log
# in logs.tar.gz, remade after each step: a command stopped at its limit still leaves what ran.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/moe-gpu-out}
STEPS=${STEPS:-tests,bench,hf}
DEADLINE=${DEADLINE:-520}
LOGS=/tmp/moe-gpu-logs
BIN=/tmp/moe-gpu
rm -rf "$LOGS"
mkdir -p "$OUT" "$LOGS" "$BIN"
step() { [[ ",$STEPS," == *",$1,"* ]]; }
# Runs "$@" for at most $1 seconds, and never past DEADLINE (SIGINT, then SIGKILL 5 s later);
# logs to $LOGS/$2.log.
limited() {
  local secs=$1 log=$2
  shift 2
  local left=$((DEADLINE - SECONDS - 5))
  ((secs > left)) && secs=$left
  if ((secs < 30)); then
    echo "== $log: skipped, ${left} s left" | tee -a "$LOGS/steps.log"
    return 1
  fi
  echo "== $log: $* (limit ${secs} s)" | tee -a "$LOGS/steps.log"
  local start=$SECONDS
  timeout -s INT -k 5 "$secs" "$@" >"$LOGS/$log.log" 2>&1
  local rc=$?
  echo "== $log: exit $rc after $((SECONDS - start)) s" | tee -a "$LOGS/steps.log"
  return $rc
}
wrap_up() {
  cat "$LOGS"/models-*.log 2>/dev/null | grep '^{' >"$OUT/models.jsonl"
  cp "$LOGS/hf.jsonl" "$OUT/hf.jsonl" 2>/dev/null
  python3 tools/gpu/summary.py "$LOGS" "$OUT" >"$OUT/summary.txt" 2>&1
  tar czf "$OUT/logs.tar.gz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
}

for f in .gpu/*.xz; do xz -dc "$f" >"$BIN/$(basename "$f" .xz)"; done
chmod +x "$BIN"/*
# The CUDA 13 libraries of PyTorch's wheels (cublas, curand, cudart); libcuda.so.1 is the
# driver's. Never the build machine's stub.
if ! CU13=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))'); then
  echo "run.sh: python3 has no nvidia wheels (PyTorch's CUDA 13 libraries): nothing can run" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$CU13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MOE_REQUIRE_CUDA=1 MOE_FIXTURES="$PWD/tests/fixtures"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm,clocks.max.mem \
  --format=csv >"$LOGS/gpu.csv" 2>&1
cat "$LOGS/gpu.csv"

if step tests; then
  # The CUDA kernels' own tests, then the op table and layer tests with CUDA among the
  # backends (ops::tests, layers::).
  limited 90 lib-tests "$BIN/lib-tests" cuda --test-threads 1 --nocapture
  limited 90 op-table "$BIN/lib-tests" ops::tests layers:: --test-threads 1
  MOE_CUDA_POISON=1 limited 150 cuda-tests "$BIN/cuda-tests" --test-threads 1 --nocapture
  wrap_up
fi

if step bench; then
  limited 130 layer "$BIN/gpu_moe_layer" --bench
  wrap_up
  for shape in q3-mini qwen3-30b-a3b; do
    limited 90 "models-$shape" "$BIN/moe" bench --device cuda --dtype bf16 --random-weights \
      --config "tools/gpu/configs/$shape.json" --batch 1,8,32 --prompt-len 512 --gen-len 32 \
      --repeats 3 --idle-seconds 1 --json
    limited 60 "models-$shape-p4096" "$BIN/moe" bench --device cuda --dtype bf16 \
      --random-weights --config "tools/gpu/configs/$shape.json" --prompt-len 4096 --gen-len 4 \
      --repeats 3 --idle-seconds 1 --json
    wrap_up
  done
fi

if step hf; then
  PYTHONUNBUFFERED=1 limited 150 hf python3 tools/gpu/hf_baseline.py --out "$LOGS/hf.jsonl"
fi

wrap_up
cat "$OUT/summary.txt"
