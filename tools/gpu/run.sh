#!/usr/bin/env bash
# Runs on the GPU machine (the device tool), from the repository root, with .gpu/ carried from
# tools/gpu/build.sh. Everything issue 6 measures, in one call, logs under $OUT:
#   1. the kernels against their CPU twins and every fixture end to end (the test binaries);
#   2. one MoE layer, ours against candle-transformers' FusedMoe (criterion, bf16);
#   3. whole models with random weights made on the GPU, q3-mini and the Qwen3-30B-A3B shape:
#      decode at batch 1, 8, 32, 128 and prefill of 512 and 4096 tokens, with NVML energy
#      (`moe bench --json`);
#   4. HF transformers + PyTorch on the same shapes (tools/gpu/hf_baseline.py), same energy
#      counter;
# and a short table last. STEPS=tests,layer,models,hf picks steps (all by default).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/moe-gpu-out}
mkdir -p "$OUT" /tmp/moe-gpu
STEPS=${STEPS:-tests,layer,models,hf}
step() { [[ ",$STEPS," == *",$1,"* ]]; }

for f in .gpu/*.xz; do xz -dc "$f" >"/tmp/moe-gpu/$(basename "$f" .xz)"; done
chmod +x /tmp/moe-gpu/*
# The CUDA 13 libraries of PyTorch's wheels (cublas, curand, cudart); libcuda.so.1 is the
# driver's. Never the build machine's stub.
CU13=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
export LD_LIBRARY_PATH="$CU13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm,clocks.max.mem \
  --format=csv | tee "$OUT/gpu.csv"

if step tests; then
  /tmp/moe-gpu/lib-tests cuda --test-threads 1 2>&1 | tee "$OUT/lib-tests.log"
  /tmp/moe-gpu/cuda-tests --test-threads 1 --nocapture 2>&1 | tee "$OUT/cuda-tests.log"
fi

if step layer; then
  /tmp/moe-gpu/gpu_moe_layer --bench 2>&1 | tee "$OUT/layer.log"
fi

if step models; then
  for shape in q3-mini qwen3-30b-a3b; do
    for batch in 1 8 32 128; do
      /tmp/moe-gpu/moe bench --device cuda --dtype bf16 --random-weights \
        --config "tools/gpu/configs/$shape.json" --batch "$batch" --prompt-len 512 --gen-len 32 \
        --repeats 3 --json 2>"$OUT/models-$shape-b$batch.err" | tail -1 >"$OUT/models-$shape-b$batch.json"
    done
    /tmp/moe-gpu/moe bench --device cuda --dtype bf16 --random-weights \
      --config "tools/gpu/configs/$shape.json" --prompt-len 4096 --gen-len 4 --repeats 3 --json \
      2>"$OUT/models-$shape-p4096.err" | tail -1 >"$OUT/models-$shape-p4096.json"
  done
fi

if step hf; then
  PYTHONUNBUFFERED=1 python3 tools/gpu/hf_baseline.py --out "$OUT/hf.jsonl" 2>&1 | tee "$OUT/hf.log"
fi

echo "== summary =="
grep -h "test result" "$OUT"/*tests.log 2>/dev/null
grep -hE "^gpu/.*(ours|fused)|time:|thrpt:" "$OUT/layer.log" 2>/dev/null | paste - - - | cut -c1-160
for f in "$OUT"/models-*.json; do
  [ -s "$f" ] && python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[1].rsplit("/", 1)[-1], {k: r[k] for k in r if "tokens_per_s" in k or k == "energy"})' "$f" | cut -c1-300
done
cat "$OUT/hf.jsonl" 2>/dev/null
