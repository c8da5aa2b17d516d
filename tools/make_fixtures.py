#!/usr/bin/env python3
"""Build the tiny reference checkpoints the tests compare against, with HF transformers.

For every supported family this writes, under tests/fixtures/<name>/:
  - a hub-layout checkpoint saved by `save_pretrained` (config.json, *.safetensors, and for some
    a sharded model.safetensors.index.json), with config.json rewritten in the style the
    published checkpoints use (`rope_theta` at top level, `rope_scaling: null`, `torch_dtype`),
    except where a fixture deliberately keeps the transformers 5 style (`rope_parameters`);
  - reference.safetensors: `tokens` (I64 [T]), `logits` (F32 [T, vocab], HF's f32 forward at
    every position) and `greedy` (I64 [12], HF's greedy continuation with eos switched off).

Weights are drawn at ~1/sqrt(fan_in) and the router is made sharper, so that logits and routing
are decisive: HF's default 0.02 init gives near-ties that would test nothing.

    pip install -r tools/requirements.txt
    python tools/make_fixtures.py                      # all fixtures
    python tools/make_fixtures.py --q3-mini DIR        # the benchmark checkpoint (DESIGN.md s5)
    python tools/make_fixtures.py --q3-30b-4l DIR      # Qwen3-30B-A3B's shape, 4 layers
"""

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PROMPT_LEN = 11
GREEDY_LEN = 12
ROUTER_SHARPNESS = 4.0

# Each fixture: family, config overrides, and how it is written.
#   style: "published" rewrites config.json as hub checkpoints do; "v5" keeps transformers 5's.
#   dtype: weights on disk; the reference always runs in f32 over exactly those weights.
#   shard: a max_shard_size for save_pretrained, to get model.safetensors.index.json.
FIXTURES_SPEC = {
    "mixtral-a": dict(
        family="mixtral", style="published", dtype=torch.float32,
        config=dict(vocab_size=211, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                    num_attention_heads=6, num_key_value_heads=2, head_dim=12,
                    num_local_experts=6, num_experts_per_tok=2, rope_theta=10000.0),
    ),
    "mixtral-b": dict(
        family="mixtral", style="published", dtype=torch.bfloat16, shard="60KB",
        config=dict(vocab_size=197, hidden_size=40, intermediate_size=36, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=1, num_local_experts=5,
                    num_experts_per_tok=1, tie_word_embeddings=True, rope_theta=1e6),
    ),
    "qwen2_moe-a": dict(
        family="qwen2_moe", style="published", dtype=torch.float32,
        config=dict(vocab_size=223, hidden_size=48, intermediate_size=72, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, num_experts=7,
                    num_experts_per_tok=3, moe_intermediate_size=28,
                    shared_expert_intermediate_size=56, norm_topk_prob=False,
                    mlp_only_layers=[1], rope_theta=10000.0),
    ),
    "qwen2_moe-b": dict(
        family="qwen2_moe", style="published", dtype=torch.float16,
        config=dict(vocab_size=181, hidden_size=40, intermediate_size=60, num_hidden_layers=3,
                    num_attention_heads=5, num_key_value_heads=1, num_experts=4,
                    num_experts_per_tok=1, moe_intermediate_size=24,
                    shared_expert_intermediate_size=44, norm_topk_prob=True,
                    decoder_sparse_step=2, tie_word_embeddings=True, rope_theta=1e6),
    ),
    "qwen3_moe-a": dict(
        family="qwen3_moe", style="v5", dtype=torch.float32,
        config=dict(vocab_size=229, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=6, num_key_value_heads=2, head_dim=10,
                    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=36,
                    norm_topk_prob=True, rope_theta=1e6),
    ),
    "qwen3_moe-b": dict(
        family="qwen3_moe", style="published", dtype=torch.float32,
        config=dict(vocab_size=173, hidden_size=36, intermediate_size=50, num_hidden_layers=3,
                    num_attention_heads=3, num_key_value_heads=3, head_dim=14,
                    num_experts=5, num_experts_per_tok=1, moe_intermediate_size=26,
                    norm_topk_prob=False, mlp_only_layers=[0], attention_bias=True,
                    tie_word_embeddings=True, rope_theta=10000.0),
    ),
    "olmoe-a": dict(
        family="olmoe", style="published", dtype=torch.float32,
        config=dict(vocab_size=191, hidden_size=48, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, num_experts=6,
                    num_experts_per_tok=2, clip_qkv=1.5, norm_topk_prob=False,
                    rope_theta=10000.0, pad_token_id=1),
    ),
    "olmoe-b": dict(
        family="olmoe", style="published", dtype=torch.float32,
        config=dict(vocab_size=167, hidden_size=40, intermediate_size=28, num_hidden_layers=2,
                    num_attention_heads=5, num_key_value_heads=1, num_experts=5,
                    num_experts_per_tok=1, norm_topk_prob=True, tie_word_embeddings=True,
                    rope_theta=500000.0, pad_token_id=1),
    ),
    "granitemoe-a": dict(
        family="granitemoe", style="published", dtype=torch.float32,
        config=dict(vocab_size=203, hidden_size=48, intermediate_size=30, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=6,
                    num_experts_per_tok=2, embedding_multiplier=2.5, attention_multiplier=0.125,
                    residual_multiplier=0.3, logits_scaling=4.0, tie_word_embeddings=True,
                    rope_theta=10000.0),
    ),
    "granitemoe-b": dict(
        family="granitemoe", style="published", dtype=torch.float32,
        config=dict(vocab_size=179, hidden_size=40, intermediate_size=26, num_hidden_layers=2,
                    num_attention_heads=5, num_key_value_heads=1, num_local_experts=5,
                    num_experts_per_tok=1, embedding_multiplier=6.0, attention_multiplier=0.09,
                    residual_multiplier=0.5, logits_scaling=2.5, attention_bias=True,
                    tie_word_embeddings=False, rope_theta=10000.0),
    ),
    # Sliding-window attention with windows shorter than the prompt and the continuation.
    "mixtral-sliding": dict(
        family="mixtral", style="published", dtype=torch.float32,
        config=dict(vocab_size=199, hidden_size=40, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=5, rope_theta=10000.0),
    ),
    "qwen2_moe-sliding": dict(
        family="qwen2_moe", style="v5", dtype=torch.float32,
        config=dict(vocab_size=187, hidden_size=40, intermediate_size=48, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                    num_experts_per_tok=2, moe_intermediate_size=24,
                    shared_expert_intermediate_size=32, norm_topk_prob=True,
                    use_sliding_window=True, sliding_window=4, max_window_layers=2,
                    rope_theta=10000.0),
    ),
    "qwen3_moe-sliding": dict(
        family="qwen3_moe", style="published", dtype=torch.float32,
        config=dict(vocab_size=193, hidden_size=36, intermediate_size=40, num_hidden_layers=2,
                    num_attention_heads=3, num_key_value_heads=1, head_dim=12, num_experts=5,
                    num_experts_per_tok=2, moe_intermediate_size=20, norm_topk_prob=True,
                    use_sliding_window=True, sliding_window=6, rope_theta=1e6),
    ),
    # gpt-oss: sinks, biases everywhere, sliding and full layers alternating (window 4 < the
    # 11-token prompt), YaRN. "a": HF's own (dequantized) layout, gate/up interleaved in
    # [E, H, 2I], with gpt-oss's published RoPE; "b": experts in MXFP4 as OpenAI publishes them
    # (`_blocks`/`_scales`, quantization_config), with a YaRN whose ramp falls inside the test
    # positions.
    "gpt_oss-a": dict(
        family="gpt_oss", style="published", dtype=torch.float32,
        rope=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                  original_max_position_embeddings=4096),
        config=dict(vocab_size=211, hidden_size=64, intermediate_size=48, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    num_local_experts=5, num_experts_per_tok=2, sliding_window=4,
                    swiglu_limit=1.5, rope_theta=150000.0),
    ),
    "gpt_oss-b": dict(
        family="gpt_oss", style="published", dtype=torch.bfloat16, mxfp4=True,
        rope=dict(rope_type="yarn", factor=4.0, beta_fast=8.0, beta_slow=1.0, truncate=False,
                  original_max_position_embeddings=16),
        config=dict(vocab_size=197, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                    num_local_experts=4, num_experts_per_tok=2, sliding_window=5,
                    swiglu_limit=2.0, rope_theta=10000.0),
    ),
}

# The benchmark checkpoint of DESIGN.md section 5: Qwen3-30B-A3B scaled down.
Q3_MINI = dict(vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8,
               num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=64,
               num_experts_per_tok=8, moe_intermediate_size=512, norm_topk_prob=True,
               max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)


def make_config(family, overrides, rope=None):
    overrides = dict(overrides)
    theta = overrides.pop("rope_theta")
    overrides.setdefault("max_position_embeddings", 128)
    rope = dict(rope or {"rope_type": "default"}, rope_theta=theta)
    return AutoConfig.for_model(family, rope_parameters=rope, **overrides)


@torch.no_grad()
def init_weights(model, seed):
    """Draw every weight at ~1/sqrt(fan_in); norms near 1; a sharper router."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:  # norm weights and biases
            base = 1.0 if name.endswith("norm.weight") else 0.0
            spread = 1.0 if name.endswith("sinks") else 0.1  # sinks that matter
            p.copy_(base + spread * torch.randn(p.shape, generator=gen))
            continue
        if name.endswith("_bias"):  # gpt-oss's stacked expert biases
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            continue
        std = 1.0 / math.sqrt(p.shape[-1])
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            std = 1.0 / math.sqrt(p.shape[-2])  # gpt-oss stores experts as (in, out)
        if "embed_tokens" in name and not model.config.tie_word_embeddings:
            std = 1.0  # a tied table doubles as the head, where unit rows would make every
            # token predict itself; an untied one feeds RMSNorm and may be large
        if name.endswith(("mlp.gate.weight", "router.weight")):
            std *= ROUTER_SHARPNESS
        p.copy_(std * torch.randn(p.shape, generator=gen))


def published_style(cfg):
    """Rewrite a transformers 5 config.json as the hub checkpoints were written."""
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    if cfg["model_type"] == "qwen3_moe":  # the published Qwen3 configs say num_experts
        cfg["num_experts"] = cfg.pop("num_local_experts")
    return cfg


def save(model, out, dtype, style, shard=None):
    if out.exists():
        shutil.rmtree(out)
    # Saved after the reference outputs are taken: this also rounds buffers (RoPE frequencies).
    model.to(dtype).save_pretrained(out, max_shard_size=shard or "50GB")
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    if style == "published":
        cfg = published_style(cfg)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen_cfg = out / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()  # config.json carries eos_token_id; one source of truth for the tests


def make_fixture(name, spec, seed):
    torch.manual_seed(seed)
    cfg = make_config(spec["family"], spec["config"], spec.get("rope"))
    model = AutoModelForCausalLM.from_config(
        cfg, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    init_weights(model, seed)
    packed = mxfp4_experts(model, seed) if spec.get("mxfp4") else None
    # The reference runs in f32 over the weights exactly as stored on disk. Parameters only:
    # `model.to(dtype)` would also round buffers such as RoPE's inverse frequencies.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(spec["dtype"]).to(torch.float32))

    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(2, cfg.vocab_size, (1, PROMPT_LEN), generator=gen)
    logits = model(tokens).logits[0].float()
    out = model.generate(tokens, max_new_tokens=GREEDY_LEN, min_new_tokens=GREEDY_LEN,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = out[0, PROMPT_LEN:]
    # Pick an eos id that the continuation never emits, so `moe generate` must run all 12 steps.
    model.config.eos_token_id = next(i for i in range(2, cfg.vocab_size) if i not in greedy.tolist())

    out_dir = FIXTURES / name
    save(model, out_dir, spec["dtype"], spec["style"], spec.get("shard"))
    if packed is not None:
        write_mxfp4(out_dir, packed)
    save_file({"tokens": tokens[0].contiguous(), "logits": logits.contiguous(),
               "greedy": greedy.contiguous()}, out_dir / "reference.safetensors")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"{name}: {size / 1024:.0f} KiB, max |logit| {logits.abs().max():.2f}, greedy {greedy.tolist()}")


FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                           -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def mxfp4_pack(w, gen):
    """(E, out, in) f32 -> MXFP4 as published: blocks U8 (E, out, in/32, 16), scales U8
    (E, out, in/32), and the f32 values they decode to. Each block's scale makes its largest
    value land near 6, plus or minus one power of two at random (so some codes saturate and
    some stay small); every code appears."""
    e, o, i = w.shape
    g = w.reshape(e, o, i // 32, 32)
    amax = g.abs().amax(-1).clamp_min(1e-30)
    exp = torch.floor(torch.log2(amax / 6.0)) + torch.randint(-1, 2, amax.shape, generator=gen)
    scales = (exp + 127).clamp(1, 254).to(torch.uint8)
    power = torch.pow(2.0, scales.to(torch.float32) - 127)[..., None]  # exact powers of two
    scaled = g / power
    codes = (scaled[..., None] - FP4_VALUES).abs().argmin(-1).to(torch.uint8)  # nearest value
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    values = FP4_VALUES[codes.long()] * power
    return blocks, scales, values.reshape(e, o, i)


@torch.no_grad()
def mxfp4_experts(model, seed):
    """Quantizes every layer's experts to MXFP4 in place (the model then holds exactly the
    values the packed tensors decode to) and returns the packed tensors by hub name."""
    gen = torch.Generator().manual_seed(seed + 7)
    packed = {}
    for li, layer in enumerate(model.model.layers):
        experts = layer.mlp.experts
        for proj in ("gate_up_proj", "down_proj"):
            param = getattr(experts, proj)  # (E, in, out)
            blocks, scales, values = mxfp4_pack(param.transpose(1, 2).float(), gen)
            param.copy_(values.transpose(1, 2))
            prefix = f"model.layers.{li}.mlp.experts.{proj}"
            packed[f"{prefix}_blocks"] = blocks.contiguous()
            packed[f"{prefix}_scales"] = scales.contiguous()
    return packed


def write_mxfp4(out_dir, packed):
    """Replaces the saved dense experts by the packed ones, and says so in config.json, as
    OpenAI's checkpoints do."""
    from safetensors.torch import load_file
    path = out_dir / "model.safetensors"
    tensors = load_file(path)
    dense = [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    for k in dense:
        del tensors[k]
    tensors.update(packed)
    save_file(tensors, path, metadata={"format": "pt"})
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = {
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"],
        "quant_method": "mxfp4",
    }
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# Qwen3-30B-A3B's layer at 4 of its 48 layers, with q3-mini's vocabulary (its made-up
# tokenizer): experts far larger than any cache, as users' are (issue 20's second shape).
Q3_30B_4L = dict(Q3_MINI, hidden_size=2048, intermediate_size=6144, num_hidden_layers=4,
                 num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                 moe_intermediate_size=768)


def make_bench_model(name, shape, out_dir, dtype=torch.float32):
    torch.manual_seed(0)
    cfg = make_config("qwen3_moe", shape)
    model = AutoModelForCausalLM.from_config(
        cfg, dtype=dtype, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    init_weights(model, 0)
    n = sum(p.numel() for p in model.parameters())
    save(model, Path(out_dir), torch.bfloat16, "published", shard="2GB")
    print(f"{name}: {n / 1e6:.0f}M parameters written to {out_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="fixture names to rebuild (default: all)")
    ap.add_argument("--q3-mini", metavar="DIR", help="write the q3-mini benchmark checkpoint to DIR")
    ap.add_argument("--q3-30b-4l", metavar="DIR",
                    help="write Qwen3-30B-A3B's shape at 4 layers (random weights, bf16) to DIR")
    args = ap.parse_args()
    if args.q3_mini:
        make_bench_model("q3-mini", Q3_MINI, args.q3_mini)
        return
    if args.q3_30b_4l:
        # Made in bf16: 2.6 G parameters would take 10 GB as f32.
        make_bench_model("q3-30b-4l", Q3_30B_4L, args.q3_30b_4l, torch.bfloat16)
        return
    for i, (name, spec) in enumerate(FIXTURES_SPEC.items()):
        if not args.only or name in args.only:
            make_fixture(name, spec, seed=1000 + 17 * i)


if __name__ == "__main__":
    main()
