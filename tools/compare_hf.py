#!/usr/bin/env python3
"""Check `moe` against HF transformers on any local hub-layout checkpoint.

Runs HF's f32 forward and greedy generation and the same through `moe logits` and
`moe generate`, then prints the largest logit error relative to the largest logit and whether
the greedy continuations agree.

    pip install -r tools/requirements.txt
    cargo build --release
    python tools/compare_hf.py DIR [--tokens 1,2,3] [--new 12]
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

MOE = Path(__file__).resolve().parent.parent / "target" / "release" / "moe"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--tokens", default="1,5,9,13,17,21,25,29,33,37,41")
    ap.add_argument("--new", type=int, default=12)
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]

    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    ids = torch.tensor([tokens])
    with torch.no_grad():
        hf_logits = model(ids).logits[0]
        # An explicit mask: otherwise generate masks every prompt token equal to pad_token_id.
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new, do_sample=False)
    hf_greedy = out[0, len(tokens):].tolist()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logits.safetensors"
        subprocess.run([MOE, "logits", "--model", args.model, "--tokens", args.tokens, "--out", path], check=True)
        ours = load_file(path)["logits"]
    gen = subprocess.run(
        [MOE, "generate", "--model", args.model, "--tokens", args.tokens, "--max-new-tokens", str(args.new),
         "--json"], check=True, capture_output=True, text=True)
    our_greedy = json.loads(gen.stdout.strip().splitlines()[-1])["tokens"]

    err = ((ours - hf_logits).abs().max() / hf_logits.abs().max()).item()
    print(f"{args.model}: max |logit error| / max |logit| = {err:.2e}")
    print(f"greedy: HF {hf_greedy}")
    print(f"        moe {our_greedy} ({'equal' if our_greedy == hf_greedy else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
