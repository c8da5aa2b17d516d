"""The short table of a GPU run (tools/gpu/run.sh): what the tests said, the layer bench's
times against FusedMoe, our whole-model numbers with the fraction of measured bandwidth and of
the bf16 tensor rate, and HF + PyTorch on the same shapes.

    python3 tools/gpu/summary.py LOGS_DIR OUT_DIR
"""

import glob
import json
import os
import re
import sys

# The bf16 dense tensor rate measured on this workplace's H200s (the device tool's KINDS.md:
# an 8192^3 product through PyTorch on random data); the datasheet says about 990.
BF16_TFLOPS = 790.0


def lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def panics(log):
    """Each panic's place and message (Rust prints the message on the line after)."""
    for i, l in enumerate(log):
        if "panicked at" in l:
            print(f"  {l[:200]}")
            if i + 1 < len(log):
                print(f"    {log[i + 1][:400]}")


def tests(logs):
    print("== tests")
    for name in ("lib-tests", "cuda-tests"):
        log = lines(os.path.join(logs, f"{name}.log"))
        results = [l for l in log if l.startswith("test result:")]
        print(f"{name}: {results[-1] if results else 'no result (did not run, or timed out)'}")
        # libtest lists the failed tests by name after a line "failures:" (the second one).
        marks = [i for i, l in enumerate(log) if l.strip() == "failures:"]
        if marks:
            for l in log[marks[-1] + 1:]:
                if l.startswith("    "):
                    print(f"  FAILED {l.strip()}")
        for l in [l for l in log if "skipping" in l][:3]:
            print(f"  {l}")
        panics(log)


def layer(logs):
    print("== layer bench (one MoE layer, bf16; criterion median)")
    current = None
    log = lines(os.path.join(logs, "layer.log"))
    panics(log)
    for l in log:
        if "agree with FusedMoe" in l or "FusedMoe n/a" in l:
            print(f"  {l[:200]}")
        m = re.match(r"^(gpu/\S+)", l)
        if m:
            current = m.group(1)
        m = re.search(r"time:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", l)
        if m and current:
            print(f"  {current:60s} {m.group(1)}")
        m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", l)
        if m and current:
            print(f"  {'':60s} {m.group(1)}")


def flops_per_token(cfg, prompt):
    """Matrix FLOPs per prompt token: 2 per active weight, plus attention over the prompt."""
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    moe = cfg["num_experts_per_tok"] * 3 * h * cfg["moe_intermediate_size"] + cfg["num_experts"] * h
    attn = h * (heads + 2 * kv) * hd + heads * hd * h
    causal = 2 * heads * hd * prompt  # scores and values, half the prompt on average, x2 FLOPs
    return 2 * layers * (moe + attn) + layers * causal + 2 * h * cfg["vocab_size"] / prompt


def models(out):
    print("== models (ours, random bf16 weights, moe bench --json)")
    configs = {
        os.path.basename(p)[:-5]: json.load(open(p)) for p in glob.glob("tools/gpu/configs/*.json")
    }
    for l in lines(os.path.join(out, "models.jsonl")):
        try:
            r = json.loads(l)
        except ValueError:
            continue
        shape = os.path.basename(r["model"].split(" ")[0])[:-5]
        roof = r["roofline"]
        e = r["energy"]
        frac = f"{roof['fraction']:.2f} of {roof['bandwidth_gb_s']:.0f} GB/s" if roof["fraction"] else ""
        prefill_frac = ""
        if shape in configs:
            tflops = r["prefill_tokens_per_s"] * flops_per_token(configs[shape], r["prompt_len"]) / 1e12
            prefill_frac = f"{tflops:.1f} TFLOP/s = {tflops / BF16_TFLOPS:.3f} of bf16"
        tpj = lambda p: f"{e[p]['tokens_per_joule']:.1f} tok/J" if e[p].get("tokens_per_joule") else "no J"
        print(
            f"  {shape:14s} batch {r['batch']:3d} prompt {r['prompt_len']:5d}: "
            f"prefill {r['prefill_tokens_per_s']:9.0f} tok/s ({prefill_frac}; {tpj('prefill')}), "
            f"decode {r['decode_tokens_per_s']:8.1f} tok/s ({frac}; {tpj('decode')})"
        )


def hf(out):
    print("== HF transformers + PyTorch (same shapes, random bf16 weights)")
    for l in lines(os.path.join(out, "hf.jsonl")):
        try:
            r = json.loads(l)
        except ValueError:
            continue
        tpj = f"{r['tokens_per_joule']:.1f} tok/J" if r.get("tokens_per_joule") else "no J"
        print(f"  {r['shape']:14s} {r['phase']:7s} batch {r['batch']:3d}: {r['tokens_per_s']:9.1f} tok/s ({tpj})")


def main():
    logs, out = sys.argv[1], sys.argv[2]
    for l in lines(os.path.join(logs, "gpu.csv")):
        print(l)
    for l in lines(os.path.join(logs, "steps.log")):
        m = re.match(r"== (\S+): exit (\d+)", l)
        if not m:
            continue
        print(l)
        if m.group(2) != "0":
            # Why it stopped: the end of its log (a missing library, a panic, a time limit).
            for tail in lines(os.path.join(logs, f"{m.group(1)}.log"))[-3:]:
                print(f"    {tail[:300]}")
    for part in (tests, layer):
        part(logs)
    for part in (models, hf):
        part(out)


if __name__ == "__main__":
    main()
