"""HF transformers + PyTorch on the shapes tools/gpu/run.sh measures ours on: random bf16
weights made on the GPU, decode at batch 1, 8 and 32 after a 512-token prompt, prefill of
512 and 4096 tokens; tokens/s (median of 3) and joules from NVML's energy counter. One JSON
object per line to --out and stdout.

    python3 tools/gpu/hf_baseline.py --out hf.jsonl [--shapes q3-mini,qwen3-30b-a3b]

Needs torch, transformers and nvidia-ml-py (the GPU machine's python3 has them).
"""

import argparse
import json
import os
import statistics
import time

import pynvml
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PROMPT = 512
GEN = 32
REPEATS = 3


def energy_mj(handle):
    return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)


def timed(handle, fn):
    """(seconds, joules) of fn(), from one device synchronize to the next."""
    torch.cuda.synchronize()
    e0, t0 = energy_mj(handle), time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, (energy_mj(handle) - e0) / 1e3


def median_run(handle, fn):
    fn()  # warm-up
    runs = [timed(handle, fn) for _ in range(REPEATS)]
    secs = statistics.median(r[0] for r in runs)
    joules = statistics.median(r[1] for r in runs)
    return secs, joules


@torch.inference_mode()
def measure(shape, handle, emit):
    cfg = AutoConfig.from_pretrained(os.path.join(CONFIGS, f"{shape}.json"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    vocab = cfg.vocab_size
    for tokens in (512, 4096):
        ids = torch.randint(0, vocab, (1, tokens), device="cuda")
        secs, joules = median_run(handle, lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
        emit(shape, "prefill", 1, tokens, secs, joules)
    for batch in (1, 8, 32):
        prompt = torch.randint(0, vocab, (batch, PROMPT), device="cuda")

        def decode():
            cache = DynamicCache()
            out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            decode.start = (time.perf_counter(), energy_mj(handle))
            for _ in range(GEN):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            decode.secs = time.perf_counter() - decode.start[0]
            decode.joules = (energy_mj(handle) - decode.start[1]) / 1e3

        decode()  # warm-up
        runs = []
        for _ in range(REPEATS):
            decode()
            runs.append((decode.secs, decode.joules))
        secs = statistics.median(r[0] for r in runs)
        joules = statistics.median(r[1] for r in runs)
        emit(shape, "decode", batch, batch * GEN, secs, joules)
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="q3-mini,qwen3-30b-a3b")
    args = ap.parse_args()
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    with open(args.out, "w") as out:

        def emit(shape, phase, batch, tokens, secs, joules):
            row = {
                "engine": f"transformers {__import__('transformers').__version__} + torch {torch.__version__}",
                "shape": shape,
                "phase": phase,
                "batch": batch,
                "tokens": tokens,
                "tokens_per_s": tokens / secs,
                "joules": joules,
                "tokens_per_joule": tokens / joules if joules > 0 else None,
            }
            line = json.dumps(row)
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()

        for shape in args.shapes.split(","):
            measure(shape, handle, emit)


if __name__ == "__main__":
    main()
