#!/usr/bin/env python3
"""Build the tiny reference checkpoints the tests compare against, with HF transformers.

For every supported family this writes, under tests/fixtures/<name>/:
  - a hub-layout checkpoint saved by `save_pretrained` (config.json, *.safetensors, and for some
    a sharded model.safetensors.index.json), with config.json rewritten in the style the
    published checkpoints use (`rope_theta` at top level, `rope_scaling: null`, `torch_dtype`),
    except where a fixture deliberately keeps the transformers 5 style (`rope_parameters`);
  - reference.safetensors: `tokens` (I64 [T]), `logits` (F32 [T, vocab], HF's f32 forward at
    every position) and `greedy` (I64 [12], HF's greedy continuation with eos switched off);
    for the hybrid families (Gated DeltaNet + attention) also `decode_logits` (F32 [T, vocab]):
    the same prompt fed one token at a time through HF's cache, its recurrent decode path.

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
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PROMPT_LEN = 11  # a spec's `prompt_len` overrides it
GREEDY_LEN = 12
ROUTER_SHARPNESS = 4.0

# Each fixture: family, config overrides, and how it is written.
#   style: "published" rewrites config.json as hub checkpoints do; "v5" keeps transformers 5's.
#   dtype: weights on disk; the reference always runs in f32 over exactly those weights.
#   shard: a max_shard_size for save_pretrained, to get model.safetensors.index.json.
#   prompt_len: the prompt's length, if not PROMPT_LEN; seed: if not the one main() derives.
#   vision: a vision_config, for the families published as image-text-to-text checkpoints (the
#     text model's config then goes in text_config); mtp: fake `mtp.*` tensors to add.
#   drop: keys to remove from the written config.json, which transformers must then default to
#     what the reference was computed with (check_reload).
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
    # Hybrid models: Gated DeltaNet (linear attention) layers and gated full-attention layers,
    # zero-centred RMSNorms, partial RoPE, MoE with a gated shared expert. Prompts longer than
    # HF's 64-token delta-rule chunk (and not a multiple of it) for "a"s.
    # qwen3_next-a: written as Qwen3-Next-80B-A3B's config.json is (flat, transformers 4.57:
    # `full_attention_interval` and no `layer_types`, `partial_rotary_factor` at top level); two
    # value heads per key head; a dense layer.
    "qwen3_next-a": dict(
        family="qwen3_next", style="published", dtype=torch.float32, prompt_len=75,
        config=dict(vocab_size=200, hidden_size=48, intermediate_size=40, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=12,
                    linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=6,
                    num_experts_per_tok=2, moe_intermediate_size=20,
                    shared_expert_intermediate_size=24, norm_topk_prob=True, mlp_only_layers=[1],
                    rope_theta=1e6),
    ),
    # qwen3_next-b: transformers 5's config (`layer_types`, `rope_parameters`), a layer pattern no
    # interval gives, as many value heads as key heads, a rotary fraction of one half. Its own
    # seed: main()'s draws a head whose delta-rule output nearly vanishes at one position, where
    # the gated norm magnifies HF's f32 rounding in the chunked prompt path to 1e-4 in the logits
    # (its token-by-token path and an f64 delta rule agree to 1e-5).
    "qwen3_next-b": dict(
        family="qwen3_next", style="v5", dtype=torch.bfloat16, seed=1274,
        rope=dict(rope_type="default", partial_rotary_factor=0.5),
        config=dict(vocab_size=173, hidden_size=40, intermediate_size=36, num_hidden_layers=5,
                    layer_types=["linear_attention", "full_attention", "linear_attention",
                                 "linear_attention", "full_attention"],
                    num_attention_heads=4, num_key_value_heads=1, head_dim=12,
                    linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8,
                    linear_value_head_dim=10, linear_conv_kernel_dim=4, num_experts=5,
                    num_experts_per_tok=2, moe_intermediate_size=16,
                    shared_expert_intermediate_size=20, norm_topk_prob=False,
                    decoder_sparse_step=1, tie_word_embeddings=True, rope_theta=1e6),
    ),
    # Qwen3.5-MoE as save_pretrained writes Qwen3_5MoeForConditionalGeneration (model.language_model.*,
    # model.visual.*, lm_head; experts one tensor per expert and projection, where the published
    # checkpoints stack them), the text config nested in text_config with M-RoPE's
    # `rope_parameters`, the published text_config's extra keys, and `mtp.*` tensors that
    # transformers does not load.
    "qwen3_5_moe-a": dict(
        family="qwen3_5_moe", style="v5", dtype=torch.float32, prompt_len=70, mtp=True,
        rope=dict(rope_type="default", partial_rotary_factor=0.25, mrope_section=[2, 1, 1],
                  mrope_interleaved=True),
        vision=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, patch_size=2,
                    temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16),
        config=dict(vocab_size=191, hidden_size=40, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, linear_num_key_heads=2,
                    linear_num_value_heads=4, linear_key_head_dim=10, linear_value_head_dim=6,
                    linear_conv_kernel_dim=4, num_experts=5, num_experts_per_tok=2,
                    moe_intermediate_size=16, shared_expert_intermediate_size=20,
                    rope_theta=1e7),
    ),
    # qwen3_next-c: what the published config.json may leave to transformers' defaults: no
    # `head_dim` (256), no `partial_rotary_factor` (0.25), `full_attention_interval` 2 and no
    # `layer_types`; attention biases (q_proj's covering the output gate's half too); a
    # three-tap conv; three value heads sharing one key head; top-1 routing without
    # renormalization; a prompt just past one 64-token chunk. Last in this table so that the
    # fixtures before it keep the seeds main() derives from their position.
    "qwen3_next-c": dict(
        family="qwen3_next", style="published", dtype=torch.float32, prompt_len=66,
        drop=("head_dim", "partial_rotary_factor"),
        config=dict(vocab_size=150, hidden_size=32, intermediate_size=24, num_hidden_layers=4,
                    full_attention_interval=2, num_attention_heads=2, num_key_value_heads=1,
                    attention_bias=True, linear_num_key_heads=1, linear_num_value_heads=3,
                    linear_key_head_dim=8, linear_value_head_dim=6, linear_conv_kernel_dim=3,
                    num_experts=4, num_experts_per_tok=1, moe_intermediate_size=12,
                    shared_expert_intermediate_size=16, norm_topk_prob=False,
                    rope_theta=10000.0),
    ),
}

# Families with Gated DeltaNet layers: their references also take HF's recurrent decode path.
HYBRID_FAMILIES = ("qwen3_next", "qwen3_5_moe")
# Published as image-text-to-text models; the text engine reads their language model.
VISION_FAMILIES = ("qwen3_5_moe",)
# RMSNorms that scale by (1 + weight), which HF initialises at zero.
ZERO_CENTRED_NORMS = ("Qwen3NextRMSNorm", "Qwen3_5MoeRMSNorm")
# Gated DeltaNet's decay rates A = exp(A_log), log-uniform over [0.02, 4]: a per-token decay
# exp(-A * softplus(a + dt_bias)) from about 0.99 (long memory) to about 0.05.
A_LOG_RANGE = (math.log(0.02), math.log(4.0))

# The benchmark checkpoint of DESIGN.md section 5: Qwen3-30B-A3B scaled down.
Q3_MINI = dict(vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8,
               num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=64,
               num_experts_per_tok=8, moe_intermediate_size=512, norm_topk_prob=True,
               max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)


def make_config(family, overrides, rope=None, vision=None):
    overrides = dict(overrides)
    theta = overrides.pop("rope_theta")
    overrides.setdefault("max_position_embeddings", 128)
    rope = dict(rope or {"rope_type": "default"}, rope_theta=theta)
    if vision is not None:  # the text model's config goes in text_config; out_hidden_size is its width
        vision = dict(vision, out_hidden_size=overrides["hidden_size"])
        return AutoConfig.for_model(family, text_config=dict(overrides, rope_parameters=rope),
                                    vision_config=vision)
    return AutoConfig.for_model(family, rope_parameters=rope, **overrides)


@torch.no_grad()
def init_weights(model, seed):
    """Draw every weight at ~1/sqrt(fan_in); norms near 1; a sharper router.

    Gated DeltaNet: A_log log-uniform (A_LOG_RANGE), dt_bias 0.5 randn, conv1d at the default
    1/sqrt(kernel) = 0.5; its gated norm (`linear_attn.norm`, x * weight) near 1. Norms computing
    x * (1 + weight) are drawn near 0 (0.1 randn), so that they too scale by about 1."""
    gen = torch.Generator().manual_seed(seed)
    zero_centred = {f"{n}.weight" for n, m in model.named_modules()
                    if type(m).__name__ in ZERO_CENTRED_NORMS}
    layer_norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    gpt_oss = model.config.model_type == "gpt_oss"
    for name, p in model.named_parameters():
        if name.endswith("linear_attn.A_log"):
            low, high = A_LOG_RANGE
            p.copy_(low + (high - low) * torch.rand(p.shape, generator=gen))
            continue
        if name.endswith("linear_attn.dt_bias"):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            continue
        if p.ndim == 1:  # norm weights and biases
            unit = (name.endswith("norm.weight") and name not in zero_centred) or name in layer_norms
            base = 1.0 if unit else 0.0
            spread = 1.0 if name.endswith("sinks") else 0.1  # sinks that matter
            p.copy_(base + spread * torch.randn(p.shape, generator=gen))
            continue
        if name.endswith("_bias"):  # gpt-oss's stacked expert biases
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            continue
        std = 1.0 / math.sqrt(p.shape[-1])
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")) and gpt_oss:
            std = 1.0 / math.sqrt(p.shape[-2])  # gpt-oss stores experts as (in, out); the other
            # families' stacked experts are (out, in), as in the fixtures made before gpt-oss
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
    cfg["torch_dtype"] = cfg.pop("dtype")
    if cfg["model_type"] == "qwen3_moe":  # the published Qwen3 configs say num_experts
        cfg["num_experts"] = cfg.pop("num_local_experts")
    if "partial_rotary_factor" in rope:  # Qwen3-Next's is at top level
        cfg["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    cfg["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    if cfg["model_type"] == "qwen3_next":  # says full_attention_interval, not layer_types
        types = cfg["layer_types"]
        interval = types.index("full_attention") + 1
        assert types == [("linear_attention", "full_attention")[(i + 1) % interval == 0]
                         for i in range(len(types))], "no full_attention_interval gives these layer_types"
        del cfg["layer_types"]
        cfg["full_attention_interval"] = interval
    return cfg


def qwen3_5_published(cfg):
    """Adds to a Qwen3.5 config.json the text_config keys that the published one carries and
    transformers 5 does not write: the multi-token-prediction head's, attn_output_gate,
    mamba_ssm_dtype, and full_attention_interval and partial_rotary_factor beside the
    layer_types and rope_parameters that say the same."""
    text = cfg["text_config"]
    types = text["layer_types"]
    text["full_attention_interval"] = types.index("full_attention") + 1
    text["partial_rotary_factor"] = text["rope_parameters"]["partial_rotary_factor"]
    text.update(attn_output_gate=True, mamba_ssm_dtype="float32", mtp_num_hidden_layers=1,
                mtp_use_dedicated_embeddings=False)
    return cfg


def save(model, out, dtype, style, shard=None, drop=()):
    if out.exists():
        shutil.rmtree(out)
    # Saved after the reference outputs are taken: this also rounds buffers (RoPE frequencies).
    model.to(dtype).save_pretrained(out, max_shard_size=shard or "50GB")
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    if style == "published":
        cfg = published_style(cfg)
    if cfg["model_type"] == "qwen3_5_moe":
        cfg = qwen3_5_published(cfg)
    for key in drop:
        del cfg[key]
        assert f'"{key}"' not in json.dumps(cfg), f"{key} is still in config.json"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen_cfg = out / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()  # config.json carries eos_token_id; one source of truth for the tests


def make_fixture(name, spec, seed):
    torch.manual_seed(seed)
    family = spec["family"]
    cfg = make_config(family, spec["config"], spec.get("rope"), spec.get("vision"))
    text_cfg = cfg.get_text_config()
    if family in HYBRID_FAMILIES:
        require_torch_paths()
    auto = AutoModelForImageTextToText if family in VISION_FAMILIES else AutoModelForCausalLM
    model = auto.from_config(
        cfg, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    init_weights(model, seed)
    packed = mxfp4_experts(model, seed) if spec.get("mxfp4") else None
    # The reference runs in f32 over the weights exactly as stored on disk. Parameters only:
    # `model.to(dtype)` would also round buffers such as RoPE's inverse frequencies.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(spec["dtype"]).to(torch.float32))

    prompt_len = spec.get("prompt_len", PROMPT_LEN)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(2, text_cfg.vocab_size, (1, prompt_len), generator=gen)
    logits = model(tokens).logits[0].float()
    reference = {"tokens": tokens[0].contiguous(), "logits": logits.contiguous()}
    if family in HYBRID_FAMILIES:
        decode_logits = token_by_token(model, tokens)
        reference["decode_logits"] = decode_logits
    out = model.generate(tokens, max_new_tokens=GREEDY_LEN, min_new_tokens=GREEDY_LEN,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = out[0, prompt_len:]
    reference["greedy"] = greedy.contiguous()
    # Pick an eos id that the continuation never emits, so `moe generate` must run all 12 steps.
    text_cfg.eos_token_id = next(i for i in range(2, text_cfg.vocab_size) if i not in greedy.tolist())
    if family in VISION_FAMILIES:
        # Image and video placeholders, and vision start and end, at ids that neither the prompt
        # nor the continuation holds: the references are text-only.
        used = set(tokens[0].tolist()) | set(greedy.tolist()) | {text_cfg.eos_token_id}
        free = (i for i in range(text_cfg.vocab_size - 1, 1, -1) if i not in used)
        for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            setattr(model.config, key, next(free))

    out_dir = FIXTURES / name
    save(model, out_dir, spec["dtype"], spec["style"], spec.get("shard"), spec.get("drop", ()))
    if packed is not None:
        write_mxfp4(out_dir, packed)
    if spec.get("mtp"):
        write_mtp(out_dir, text_cfg, spec["dtype"], seed)
    if family in HYBRID_FAMILIES:
        check_reload(out_dir, model.config)
    save_file(reference, out_dir / "reference.safetensors")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    line = f"{name}: {size / 1024:.0f} KiB, max |logit| {logits.abs().max():.2f}, greedy {greedy.tolist()}"
    if "decode_logits" in reference:
        line += f", max |logits - decode_logits| {(logits - decode_logits).abs().max():.2e}"
    print(line)


def require_torch_paths():
    """The hybrid families' references come from HF's own torch code (torch_chunk_gated_delta_rule
    for a prompt, torch_recurrent_gated_delta_rule and causal_conv1d_update one token at a time),
    which HF swaps for the `fla` and `causal-conv1d` kernels where those are installed."""
    import importlib.util
    for package in ("fla", "causal_conv1d"):
        if importlib.util.find_spec(package) is not None:
            raise SystemExit(f"{package} is installed: uninstall it, the references must come from "
                             "transformers' torch fallbacks")


@torch.no_grad()
def token_by_token(model, tokens):
    """The logits of feeding the prompt one token at a time through HF's cache."""
    cache, rows = None, []
    for t in range(tokens.shape[1]):
        out = model(tokens[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0, -1].float())
    return torch.stack(rows).contiguous()


def write_mtp(out_dir, text_cfg, dtype, seed):
    """Adds a few tensors of a multi-token-prediction head, as the published Qwen3.5 (and
    Qwen3-Next) checkpoints carry: transformers skips them (`_keys_to_ignore_on_load_unexpected`),
    and so must a text engine, knowingly."""
    from safetensors.torch import load_file
    gen = torch.Generator().manual_seed(seed + 3)
    h = text_cfg.hidden_size
    shapes = {"mtp.fc.weight": (h, 2 * h), "mtp.pre_fc_norm_embedding.weight": (h,),
              "mtp.pre_fc_norm_hidden.weight": (h,), "mtp.norm.weight": (h,),
              "mtp.layers.0.input_layernorm.weight": (h,),
              "mtp.layers.0.mlp.gate.weight": (text_cfg.num_experts, h)}
    path = out_dir / "model.safetensors"
    tensors = load_file(path)
    for key, shape in shapes.items():
        tensors[key] = (0.1 * torch.randn(shape, generator=gen)).to(dtype)
    save_file(tensors, path, metadata={"format": "pt"})


def check_reload(out_dir, config):
    """The config.json as written (published style included, keys dropped) must give
    transformers the same head size, layer pattern and RoPE as the model the references came
    from."""
    loaded = AutoConfig.from_pretrained(out_dir).get_text_config()
    want = config.get_text_config()
    assert loaded.head_dim == want.head_dim, (loaded.head_dim, want.head_dim)
    assert loaded.layer_types == want.layer_types, (loaded.layer_types, want.layer_types)
    assert loaded.rope_parameters == want.rope_parameters, (loaded.rope_parameters, want.rope_parameters)


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
            make_fixture(name, spec, seed=spec.get("seed", 1000 + 17 * i))


if __name__ == "__main__":
    main()
