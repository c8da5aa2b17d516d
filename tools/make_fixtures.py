#!/usr/bin/env python3
"""Build the tiny reference checkpoints the tests compare against, with HF transformers.

For every supported family this writes, under tests/fixtures/<name>/:
  - a hub-layout checkpoint saved by `save_pretrained` (config.json, *.safetensors, and for some
    a sharded model.safetensors.index.json), with config.json rewritten in the style the
    published checkpoints use (`rope_theta` at top level, `rope_scaling: null`, `torch_dtype`),
    except where a fixture deliberately keeps the transformers 5 style (`rope_parameters`);
  - reference.safetensors: `tokens` (I64 [T]), `logits` (F32 [T, vocab], HF's f32 forward at
    every position) and `greedy` (I64 [12], HF's greedy continuation with eos switched off);
    for the hybrid families (Gated DeltaNet + attention) and the biased-router ones (DeepSeek-V3,
    GLM-4.5, GLM-4.7-Flash) also `decode_logits` (F32 [T, vocab]): the same prompt fed one token
    at a time through HF's cache, its recurrent (or latent-attention) decode path.

Weights are drawn at ~1/sqrt(fan_in) and the router is made sharper, so that logits and routing
are decisive: HF's default 0.02 init gives near-ties that would test nothing.

    pip install -r tools/requirements.txt
    python tools/make_fixtures.py                      # all fixtures
    python tools/make_fixtures.py --q3-mini DIR        # the benchmark checkpoint (DESIGN.md s5)
    python tools/make_fixtures.py --q3-30b-4l DIR      # Qwen3-30B-A3B's shape, 4 layers
    python tools/make_fixtures.py --gemma4-26b-4l DIR  # Gemma 4 26B-A4B's shape, 4 layers
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
    # Sigmoid routing with a correction bias (DeepSeek-V3's "noaux_tc"): each router's
    # `e_score_correction_bias` is drawn (CORRECTION_BIAS_SPREAD) so that it changes the chosen
    # experts for a share of the prompt's routings (printed), expert groups where n_group > 1,
    # shared experts, dense first layers, and a multi-token-prediction layer's tensors at
    # model.layers.{num_hidden_layers} that transformers does not load (mtp_layer_tensors). Their
    # references also carry `decode_logits`: latent attention decodes by another algebra than
    # it runs a prompt, and HF's cached one-token path is the reference for that.
    # deepseek_v3-a: as deepseek-ai publishes DeepSeek-V3: latent attention with a low-rank q
    # (q_lora_rank), values narrower than the keys' no-RoPE part, RoPE on interleaved pairs
    # (the published config has no `rope_interleave`; transformers' default is true, so it is
    # dropped here too), YaRN in the published `rope_scaling` form ("type": "yarn") with unequal
    # mscale and mscale_all_dim, so that both the cos/sin factor and the softmax scale move; a
    # rope_theta of 20 puts one of the four rotary frequencies inside YaRN's ramp (blended half
    # and half), one outside it and two interpolated. 4 expert groups of which 2 are kept.
    "deepseek_v3-a": dict(
        family="deepseek_v3", style="published", dtype=torch.float32, prompt_len=20, mtp=True,
        drop=("rope_interleave",),
        rope=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16,
                  beta_fast=32, beta_slow=1, mscale=0.9, mscale_all_dim=1.1),
        config=dict(vocab_size=128, hidden_size=48, intermediate_size=32, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
                    kv_lora_rank=32, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10,
                    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=10,
                    n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                    n_shared_experts=2, first_k_dense_replace=1, max_position_embeddings=64,
                    rope_theta=20.0),
    ),
    # deepseek_v3-b: FP8 as DeepSeek publishes it: every Linear weight of the decoder layers
    # (attention, dense and shared MLPs, each routed expert) F8_E4M3 with an F32
    # `weight_scale_inv` per (16, 32) block, blocks that tile none of the matrices exactly
    # (the published [128, 128] would give these tiny ones a single block); embeddings, head,
    # norms and routers bf16, the correction bias F32 (fp8_quantize, write_published_tensors).
    # A plain q_proj (q_lora_rank null), RoPE on the two halves (rope_interleave false), no RoPE
    # scaling, one expert group, routing weights not renormalized.
    "deepseek_v3-b": dict(
        family="deepseek_v3", style="published", dtype=torch.bfloat16, prompt_len=16, mtp=True,
        fp8=(16, 32),
        config=dict(vocab_size=181, hidden_size=56, intermediate_size=44, num_hidden_layers=3,
                    num_attention_heads=3, num_key_value_heads=3, q_lora_rank=None,
                    kv_lora_rank=24, qk_nope_head_dim=10, qk_rope_head_dim=6, v_head_dim=14,
                    n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=20,
                    n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=False,
                    n_shared_experts=1, first_k_dense_replace=1, rope_interleave=False,
                    rope_theta=10000.0),
    ),
    # glm4_moe_lite-a: as zai-org publishes GLM-4.7-Flash: DeepSeek's latent attention with
    # values wider than the keys' no-RoPE part (its 192 : 64 : 256), `partial_rotary_factor`
    # 1.0 at top level, `first_k_dense_replace` 1 and no `mlp_layer_types` (which is what
    # transformers reads: its default, one dense layer then sparse ones, agrees), bf16. Its own
    # seed: main()'s gives one routing whose second and third experts' biased scores are 1e-5
    # apart, which arithmetic other than HF's may order either way; this one's closest is 0.017.
    "glm4_moe_lite-a": dict(
        family="glm4_moe_lite", style="published", dtype=torch.bfloat16, prompt_len=17, seed=1404,
        mtp=True, rope=dict(rope_type="default", partial_rotary_factor=1.0),
        config=dict(vocab_size=170, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
                    kv_lora_rank=32, qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=16,
                    n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=12,
                    n_group=1, topk_group=1, routed_scaling_factor=1.8, norm_topk_prob=True,
                    n_shared_experts=1, rms_norm_eps=1e-5, rope_theta=1e6),
    ),
    # glm4_moe-a: as zai-org publishes GLM-4.5-Air: ordinary GQA with a head_dim that is not
    # hidden / heads, RoPE on the first half of each head (`partial_rotary_factor` 0.5 at top
    # level), q/k norms, q/k/v biases (none on o_proj), and 2 expert groups of which 1 is kept.
    "glm4_moe-a": dict(
        family="glm4_moe", style="published", dtype=torch.float32, prompt_len=15, mtp=True,
        rope=dict(rope_type="default", partial_rotary_factor=0.5),
        config=dict(vocab_size=190, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    use_qk_norm=True, attention_bias=True, n_routed_experts=8,
                    num_experts_per_tok=2, moe_intermediate_size=12, n_group=2, topk_group=1,
                    routed_scaling_factor=2.5, norm_topk_prob=True, n_shared_experts=1,
                    first_k_dense_replace=1, rope_theta=1e6),
    ),
    # Dense Qwen3, the baseline a sparse model is weighed against (the bundled MoE's twins are
    # Qwen3 checkpoints). "a" as Qwen3's published configs (use_sliding_window false beside a
    # max_window_layers); "sliding" without layer_types, so that the window's layers come from
    # HF's rule (the layers from max_window_layers up slide, window 4 < the prompt).
    "qwen3-a": dict(
        family="qwen3", style="published", dtype=torch.bfloat16,
        config=dict(vocab_size=201, hidden_size=48, intermediate_size=88, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    max_window_layers=2, tie_word_embeddings=True, rope_theta=1e6),
    ),
    "qwen3-sliding": dict(
        family="qwen3", style="published", dtype=torch.float32, drop=("layer_types",),
        config=dict(vocab_size=183, hidden_size=40, intermediate_size=72, num_hidden_layers=3,
                    num_attention_heads=5, num_key_value_heads=1, head_dim=12,
                    attention_bias=True, use_sliding_window=True, sliding_window=4,
                    max_window_layers=1, rope_theta=10000.0),
    ),
    # Gemma 4 as google publishes it: Gemma4ForConditionalGeneration (the text model's tensors
    # under model.language_model.*, a small vision tower's under model.vision_tower.* and
    # model.embed_vision.*, no audio tower), the text config in text_config with the published
    # keys: global_head_dim and num_global_key_value_heads, which transformers 5.24 folds into a
    # `per_layer_config` and writes instead (gemma4_published puts them back), rope_parameters
    # keyed by layer type (GEMMA4_ROPE: the full layers' "proportional" RoPE turns a quarter of
    # their head, the sliding layers' plain RoPE all of it), use_bidirectional_attention
    # "vision" (which text alone does not use). Sliding and full layers of other head sizes and
    # KV-head counts; q and k norms, a v norm without weight, attention scores unscaled (the
    # norms stand in for 1/sqrt(d)); each layer's output times its `layer_scalar` buffer; logits
    # softcapped. Every norm weight, the routers' `scale` and `per_expert_scale` and the
    # `layer_scalar`s are drawn away from 1 (GEMMA4_UNIT_RANGE), so that each matters.
    # gemma4-a: Gemma 4 26B-A4B's layout: in every layer a dense MLP and routed experts side by
    # side, each with its own norms, the router reading the residual stream (not the MLP's
    # normed input) through its own scale, top-k weights renormalized then times
    # per_expert_scale; the full layers' keys doubling as values (attention_k_eq_v: no v_proj),
    # with one KV head of 16 where the sliding layers have two of 12; a window of 4 < the
    # 13-token prompt; a softcap of 5 that the largest raw logits exceed (6.7 over the prompt,
    # GEMMA4_HEAD_GAIN), bending all of them; the head untied (the published checkpoints tie
    # it) so that lm_head.weight is stored.
    "gemma4-a": dict(
        family="gemma4", style="published", dtype=torch.float32, prompt_len=13,
        vision=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, head_dim=8, patch_size=2,
                    pooling_kernel_size=3, position_embedding_size=16, standardize=True),
        config=dict(vocab_size=217, hidden_size=48, intermediate_size=40, num_hidden_layers=5,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                 "sliding_attention", "full_attention"],
                    num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                    num_global_key_value_heads=1, global_head_dim=16, attention_k_eq_v=True,
                    enable_moe_block=True, num_experts=6, top_k_experts=2,
                    moe_intermediate_size=20, sliding_window=4, final_logit_softcapping=5.0,
                    hidden_size_per_layer_input=0, num_kv_shared_layers=0,
                    use_bidirectional_attention="vision", tie_word_embeddings=False),
    ),
    # gemma4-b: Gemma 4 31B's dense layout (no experts: num_experts, top_k_experts and
    # moe_intermediate_size null), bf16, sharded, tied; full layers with a v_proj of their own
    # (attention_k_eq_v false), where transformers ignores num_global_key_value_heads: they keep
    # num_key_value_heads' one KV head although the config says 5; the first layer full; a
    # global head of 24 whose proportional RoPE turns 3 pairs; window 5 < the 11-token prompt.
    # Its own seed: main()'s continues with one token six times, then another six times (a
    # tied head favours the token just read); this one's twelve tokens are all different.
    "gemma4-b": dict(
        family="gemma4", style="published", dtype=torch.bfloat16, shard="40KB", seed=1455,
        vision=dict(hidden_size=12, intermediate_size=20, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, head_dim=6, patch_size=2,
                    pooling_kernel_size=3, position_embedding_size=8, standardize=True),
        config=dict(vocab_size=181, hidden_size=40, intermediate_size=56, num_hidden_layers=4,
                    layer_types=["full_attention", "sliding_attention", "sliding_attention",
                                 "full_attention"],
                    num_attention_heads=5, num_key_value_heads=1, head_dim=8,
                    num_global_key_value_heads=5, global_head_dim=24, attention_k_eq_v=False,
                    enable_moe_block=False, sliding_window=5, final_logit_softcapping=30.0,
                    hidden_size_per_layer_input=0, num_kv_shared_layers=0,
                    use_bidirectional_attention="vision", tie_word_embeddings=True),
    ),
}

# Families with Gated DeltaNet layers: their references also take HF's recurrent decode path.
HYBRID_FAMILIES = ("qwen3_next", "qwen3_5_moe")
# Published as image-text-to-text models; the text engine reads their language model. Their
# placeholder tokens (image, video, audio, and where they begin and end) are given ids that
# neither the prompt nor the continuation holds: the references are text-only.
PLACEHOLDER_TOKENS = {
    "qwen3_5_moe": ("image_token_id", "video_token_id", "vision_start_token_id",
                    "vision_end_token_id"),
    "gemma4": ("image_token_id", "video_token_id", "audio_token_id", "boi_token_id",
               "eoi_token_id", "boa_token_id", "eoa_token_index"),
}
VISION_FAMILIES = tuple(PLACEHOLDER_TOKENS)
# Gemma 4's rope_parameters as the published checkpoints have them, keyed by layer type.
GEMMA4_ROPE = {
    "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                       "rope_type": "proportional"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
}
# Text-config keys of the published Gemma 4 checkpoints that transformers folds into
# per_layer_config and does not keep (gemma4_config, gemma4_published).
GEMMA4_GLOBAL_KEYS = ("global_head_dim", "num_global_key_value_heads")
# Where Gemma 4's multiplicative weights are drawn: its RMSNorms' (x * weight, HF's init 1),
# the router's `scale` and `per_expert_scale` (1), each layer's `layer_scalar` buffer (1).
GEMMA4_UNIT_RANGE = (0.5, 1.5)
# An untied Gemma 4 head is drawn this much larger than 1/sqrt(hidden), so that the raw logits
# reach well past a small final_logit_softcapping, which then bends them.
GEMMA4_HEAD_GAIN = 2.0
# The vision_soft_tokens_per_image of the published Gemma 4 config.json (the processor's
# budget of soft tokens per image, which the model's config does not use).
GEMMA4_SOFT_TOKENS_PER_IMAGE = 280
# Sigmoid routers with an `e_score_correction_bias` (DeepSeek-V3's "noaux_tc"): the bias is
# drawn (it is a buffer, which init_weights does not touch and HF initialises at zero), and the
# references also take HF's one-token-at-a-time decode path.
BIASED_ROUTER_FAMILIES = ("deepseek_v3", "glm4_moe_lite", "glm4_moe")
DECODE_FAMILIES = HYBRID_FAMILIES + BIASED_ROUTER_FAMILIES
# The correction bias's spread, about that of the sigmoid scores it is added to: enough to
# change which experts a good share of tokens choose.
CORRECTION_BIAS_SPREAD = 0.2
# Keys the published DeepSeek-V3 config.json carries that transformers does not use.
DEEPSEEK_V3_PUBLISHED = dict(scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1,
                             ep_size=1, aux_loss_alpha=0.001, seq_aux=True)
# FP8 E4M3's largest finite value.
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
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
    if family == "gemma4":
        return gemma4_config(overrides, rope, vision)
    theta = overrides.pop("rope_theta")
    overrides.setdefault("max_position_embeddings", 128)
    rope = dict(rope or {"rope_type": "default"}, rope_theta=theta)
    if vision is not None:  # the text model's config goes in text_config; out_hidden_size is its width
        vision = dict(vision, out_hidden_size=overrides["hidden_size"])
        return AutoConfig.for_model(family, text_config=dict(overrides, rope_parameters=rope),
                                    vision_config=vision)
    return AutoConfig.for_model(family, rope_parameters=rope, **overrides)


def gemma4_config(text, rope=None, vision=None):
    """A Gemma4Config (Gemma4ForConditionalGeneration) with `text` as its text_config, rope
    GEMMA4_ROPE unless given, `vision` as vision_config (None: no vision tower) and no audio.
    transformers turns global_head_dim (and num_global_key_value_heads, only where
    attention_k_eq_v) into per_layer_config overrides of the full layers and keeps neither
    key: they are set back on text_config, which then writes them to config.json as the
    published checkpoints say them. The top-level tie_word_embeddings, not text_config's, is
    the one that ties the head: both are given the text's."""
    text = dict(text)
    text.setdefault("max_position_embeddings", 128)
    tie = text.setdefault("tie_word_embeddings", True)
    published = {key: text[key] for key in GEMMA4_GLOBAL_KEYS}
    cfg = AutoConfig.for_model("gemma4", text_config=dict(text, rope_parameters=rope or GEMMA4_ROPE),
                               vision_config=vision, audio_config=None, tie_word_embeddings=tie)
    for key, value in published.items():
        setattr(cfg.text_config, key, value)
    return cfg


@torch.no_grad()
def init_weights(model, seed):
    """Draw every weight at ~1/sqrt(fan_in); norms near 1; a sharper router.

    Gated DeltaNet: A_log log-uniform (A_LOG_RANGE), dt_bias 0.5 randn, conv1d at the default
    1/sqrt(kernel) = 0.5; its gated norm (`linear_attn.norm`, x * weight) near 1. Norms computing
    x * (1 + weight) are drawn near 0 (0.1 randn), so that they too scale by about 1.

    Gemma 4: its norm weights, the routers' scale and per_expert_scale, and the layer_scalar
    buffers uniform over GEMMA4_UNIT_RANGE; the embedding at 1/sqrt(hidden) tied or not (the
    model multiplies it by sqrt(hidden)); router.proj at ROUTER_SHARPNESS, undoing the
    1/sqrt(hidden) by which the router scales its (RMS-normed) input; an untied head
    GEMMA4_HEAD_GAIN times larger."""
    gen = torch.Generator().manual_seed(seed)
    zero_centred = {f"{n}.weight" for n, m in model.named_modules()
                    if type(m).__name__ in ZERO_CENTRED_NORMS}
    layer_norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    gpt_oss = model.config.model_type == "gpt_oss"
    gemma4 = model.config.model_type == "gemma4"
    gemma4_norms = {f"{n}.weight" for n, m in model.named_modules() if type(m).__name__ == "Gemma4RMSNorm"}
    unit = lambda shape: GEMMA4_UNIT_RANGE[0] + (GEMMA4_UNIT_RANGE[1] - GEMMA4_UNIT_RANGE[0]) * \
        torch.rand(shape, generator=gen)
    for name, p in model.named_parameters():
        if gemma4 and p.ndim == 1:
            assert name in gemma4_norms or name.endswith(("router.scale", "router.per_expert_scale")), name
            p.copy_(unit(p.shape))
            continue
        if gemma4 and name.endswith("router.proj.weight"):
            p.copy_(ROUTER_SHARPNESS * torch.randn(p.shape, generator=gen))
            continue
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
        if "embed_tokens" in name and not model.config.tie_word_embeddings and not gemma4:
            std = 1.0  # a tied table doubles as the head, where unit rows would make every
            # token predict itself; an untied one feeds RMSNorm and may be large
        if name.endswith(("mlp.gate.weight", "router.weight")):
            std *= ROUTER_SHARPNESS
        if gemma4 and name == "lm_head.weight" and not model.config.tie_word_embeddings:
            std *= GEMMA4_HEAD_GAIN
        p.copy_(std * torch.randn(p.shape, generator=gen))
    if gemma4:  # a buffer, which the checkpoint stores
        for name, buf in model.named_buffers():
            if name.endswith("layer_scalar"):
                buf.copy_(unit(buf.shape))


def published_style(cfg):
    """Rewrite a transformers 5 config.json as the hub checkpoints were written."""
    if cfg["model_type"] == "gemma4":  # published in transformers 5's own style, nearly
        return gemma4_published(cfg)
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
    if cfg["model_type"] == "deepseek_v3":
        # transformers derives head_dim (qk_rope_head_dim) and qk_head_dim (nope + rope) and
        # writes them; the published config has neither, and YaRN as {"type": "yarn", ...}
        del cfg["head_dim"], cfg["qk_head_dim"]
        if cfg["rope_scaling"] is not None:
            cfg["rope_scaling"]["type"] = cfg["rope_scaling"].pop("rope_type")
        cfg.update(DEEPSEEK_V3_PUBLISHED)
    if cfg["model_type"] == "glm4_moe_lite":
        # transformers 5 reads mlp_layer_types and ignores first_k_dense_replace; GLM-4.7-Flash
        # says first_k_dense_replace, and transformers' default mlp_layer_types agrees with it
        # only for one dense layer
        types = cfg.pop("mlp_layer_types")
        assert types == ["dense"] + ["sparse"] * (len(types) - 1), \
            "no published glm4_moe_lite config gives these mlp_layer_types"
        del cfg["qk_head_dim"]
        cfg.update(first_k_dense_replace=1, num_nextn_predict_layers=1, topk_method="noaux_tc")
        cfg["dtype"] = cfg.pop("torch_dtype")  # written by transformers 5.0.0.dev0, which says dtype
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


def gemma4_published(cfg):
    """Gemma 4's config.json as google publishes it: in text_config global_head_dim and
    num_global_key_value_heads (gemma4_config), not the `per_layer_config` that transformers
    5.24 writes in their place (which the published files do not have); the checkpoint's
    dtype in the sub-configs too; at top level eoa_token_id beside eoa_token_index, and
    vision_soft_tokens_per_image where there is a vision tower."""
    text = cfg["text_config"]
    del text["per_layer_config"]
    missing = [key for key in GEMMA4_GLOBAL_KEYS if key not in text]
    assert not missing, f"text_config lacks {missing}"
    for sub in ("text_config", "vision_config"):  # save_pretrained leaves them the model's f32
        if cfg.get(sub) is not None:
            cfg[sub]["dtype"] = cfg["dtype"]
    cfg["eoa_token_id"] = cfg["eoa_token_index"]
    if cfg.get("vision_config") is not None:
        cfg["vision_soft_tokens_per_image"] = GEMMA4_SOFT_TOKENS_PER_IMAGE
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
    if family in BIASED_ROUTER_FAMILIES:
        draw_correction_bias(model, seed)
    packed = mxfp4_experts(model, seed) if spec.get("mxfp4") else None
    # The reference runs in f32 over the weights exactly as stored on disk. Parameters only:
    # `model.to(dtype)` would also round buffers such as RoPE's inverse frequencies.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(spec["dtype"]).to(torch.float32))
        for n, b in model.named_buffers():  # Gemma 4's, which the checkpoint stores
            if n.endswith("layer_scalar"):
                b.copy_(b.to(spec["dtype"]).to(torch.float32))
    # After that rounding: the FP8 weights' values (code times an F32 scale) are not bf16's.
    fp8 = fp8_quantize(model, spec["fp8"]) if spec.get("fp8") else None

    prompt_len = spec.get("prompt_len", PROMPT_LEN)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(2, text_cfg.vocab_size, (1, prompt_len), generator=gen)
    logits = model(tokens).logits[0].float()
    reference = {"tokens": tokens[0].contiguous(), "logits": logits.contiguous()}
    if family in DECODE_FAMILIES:
        decode_logits = token_by_token(model, tokens)
        reference["decode_logits"] = decode_logits
    bias_effect = correction_bias_effect(model, tokens) if family in BIASED_ROUTER_FAMILIES else None
    out = model.generate(tokens, max_new_tokens=GREEDY_LEN, min_new_tokens=GREEDY_LEN,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = out[0, prompt_len:]
    reference["greedy"] = greedy.contiguous()
    # Pick an eos id that the continuation never emits, so `moe generate` must run all 12 steps.
    text_cfg.eos_token_id = next(i for i in range(2, text_cfg.vocab_size) if i not in greedy.tolist())
    if family in VISION_FAMILIES:
        # The placeholders (PLACEHOLDER_TOKENS) at ids that neither the prompt nor the
        # continuation holds: the references are text-only.
        used = set(tokens[0].tolist()) | set(greedy.tolist()) | {text_cfg.eos_token_id}
        free = (i for i in range(text_cfg.vocab_size - 1, 1, -1) if i not in used)
        for key in PLACEHOLDER_TOKENS[family]:
            setattr(model.config, key, next(free))
    gap = routing_gap(model, torch.cat([tokens, greedy[None]], 1)) if family == "gemma4" else None

    out_dir = FIXTURES / name
    # `save` rounds buffers to the checkpoint's dtype too; the correction bias is kept F32, as
    # transformers keeps it (_keep_in_fp32_modules_strict) and the published checkpoints store it.
    biases = {n: b.clone() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")}
    save(model, out_dir, spec["dtype"], spec["style"], spec.get("shard"), spec.get("drop", ()))
    if packed is not None:
        write_mxfp4(out_dir, packed)
    if family in BIASED_ROUTER_FAMILIES:
        write_published_tensors(out_dir, text_cfg, spec, seed, biases, fp8)
    elif spec.get("mtp"):
        write_mtp(out_dir, text_cfg, spec["dtype"], seed)
    if family in HYBRID_FAMILIES or family in BIASED_ROUTER_FAMILIES or family == "gemma4":
        check_reload(out_dir, model.config)
    if family in BIASED_ROUTER_FAMILIES:
        check_stored(out_dir, tokens, logits)
    if family == "gemma4":
        check_reloaded_logits(out_dir, auto, tokens, logits)
    save_file(reference, out_dir / "reference.safetensors")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    line = f"{name}: {size / 1024:.0f} KiB, max |logit| {logits.abs().max():.2f}, greedy {greedy.tolist()}"
    if "decode_logits" in reference:
        line += f", max |logits - decode_logits| {(logits - decode_logits).abs().max():.2e}"
    if bias_effect is not None:
        line += f", correction bias changes {100 * bias_effect:.0f}% of routings"
    if gap is not None:
        line += f", closest routing gap {gap:.3f}"
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
    from; for the biased-router families, every setting the model's config holds."""
    loaded = AutoConfig.from_pretrained(out_dir).get_text_config()
    want = config.get_text_config()
    if getattr(want, "is_heterogeneous", False):  # gemma4: head size and KV heads by layer
        shapes = lambda c: [(layer.head_dim, layer.num_key_value_heads) for layer in c.per_layer_config]
        assert shapes(loaded) == shapes(want), (shapes(loaded), shapes(want))
    else:
        assert loaded.head_dim == want.head_dim, (loaded.head_dim, want.head_dim)
    for key in ("layer_types", "mlp_layer_types"):
        assert getattr(loaded, key, None) == getattr(want, key, None), (key, getattr(loaded, key, None))
    # A published {"type": "yarn", ...} is read into rope_parameters with "type" kept beside
    # the "rope_type" it becomes.
    rope = {k: v for k, v in loaded.rope_parameters.items() if k != "type"}
    assert rope == want.rope_parameters, (loaded.rope_parameters, want.rope_parameters)
    if want.model_type in BIASED_ROUTER_FAMILIES or want.model_type == "gemma4_text":
        got, expected = loaded.to_dict(), want.to_dict()
        # gemma4: the published global_head_dim and num_global_key_value_heads reload as the
        # per_layer_config that the model was built from (which this compares), not as keys
        skip = ("dtype", "rope_parameters", "_name_or_path") + GEMMA4_GLOBAL_KEYS
        differ = {k: (got.get(k), v) for k, v in expected.items()
                  if k not in skip and got.get(k) != v}
        assert not differ, f"config.json reloads differently: {differ}"


@torch.no_grad()
def check_reloaded_logits(out_dir, auto, tokens, logits):
    """The checkpoint as written (published config.json, tensors in the disk dtype), loaded by
    transformers with no tensor missing or left over, gives exactly the reference logits."""
    model, info = auto.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True)
    left = {k: v for k, v in info.items() if v}
    assert not left, f"loading {out_dir} left {left}"
    again = model.eval()(tokens).logits[0].float()
    assert torch.equal(again, logits), \
        f"the reloaded checkpoint gives other logits: {(again - logits).abs().max()}"


@torch.no_grad()
def routing_gap(model, tokens):
    """The smallest gap, over the routings of every token of `tokens` (the prompt and its
    continuation) at every Gemma 4 MoE layer, between the scores (log-probabilities) of the
    last expert chosen and the first one left out; None without routers."""
    gaps = []
    def record(router, args, out):
        k = router.config.top_k_experts
        top = out[0].log().topk(k + 1, dim=-1).values
        gaps.append((top[:, k - 1] - top[:, k]).min())
    hooks = [m.register_forward_hook(record) for m in model.modules()
             if type(m).__name__ == "Gemma4TextRouter"]
    model(tokens)
    for hook in hooks:
        hook.remove()
    return min(gaps).item() if gaps else None


@torch.no_grad()
def check_stored(out_dir, tokens, logits):
    """A model built from the written config.json, with the weights read back from the written
    safetensors as an engine must read them (FP8 blocks times their weight_scale_inv, one tensor
    per expert, the MTP layer skipped), must give exactly the reference logits: the checkpoint
    means what the reference was computed from."""
    import re
    from safetensors.torch import load_file
    cfg = AutoConfig.from_pretrained(out_dir)
    block = getattr(cfg, "quantization_config", {}).get("weight_block_size")
    model = AutoModelForCausalLM.from_config(
        cfg, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    stored = load_file(out_dir / "model.safetensors")
    mtp = f"model.layers.{cfg.num_hidden_layers}."
    state, experts = {}, {}
    for key, t in stored.items():
        if key.startswith(mtp) or key.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            t = fp8_dequantize(t, stored[f"{key}_scale_inv"], block)
        per_expert = re.fullmatch(r"(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight", key)
        if per_expert:
            prefix, e, proj = per_expert.groups()
            experts.setdefault(prefix, {})[(int(e), proj)] = t.float()
        else:
            state[key] = t.float()
    for prefix, w in experts.items():
        n = len(w) // 3
        state[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([w[(e, "gate")], w[(e, "up")]]) for e in range(n)])
        state[f"{prefix}.down_proj"] = torch.stack([w[(e, "down")] for e in range(n)])
    model.load_state_dict(state, strict=True)
    again = model(tokens).logits[0].float()
    assert torch.equal(again, logits), f"the stored checkpoint gives other logits: {(again - logits).abs().max()}"


def draw_correction_bias(model, seed):
    """Draws each router's e_score_correction_bias (CORRECTION_BIAS_SPREAD randn): a buffer, zero
    as HF initialises it, which would leave the bias untested."""
    gen = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(CORRECTION_BIAS_SPREAD * torch.randn(buf.shape, generator=gen))


@torch.no_grad()
def correction_bias_effect(model, tokens):
    """The fraction of the prompt's (token, MoE layer) routings whose chosen experts change when
    the correction bias is zeroed, each router given the same input as in the reference."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out[2])))
             for m in model.modules() if hasattr(m, "e_score_correction_bias")]
    model(tokens)
    for hook in hooks:
        hook.remove()
    changed = total = 0
    for router, x, chosen in seen:
        bias = router.e_score_correction_bias.clone()
        router.e_score_correction_bias.zero_()
        unbiased = router(x)[2]
        router.e_score_correction_bias.copy_(bias)
        changed += (chosen.sort(-1).values != unbiased.sort(-1).values).any(-1).sum().item()
        total += chosen.shape[0]
    assert changed > 0, "the correction bias changes no routing"
    return changed / total


def mtp_layer_tensors(text_cfg, dtype, seed, fp8_block=None):
    """A few tensors of the multi-token-prediction layer that DeepSeek-V3, GLM-4.5 and
    GLM-4.7-Flash checkpoints store as one more decoder layer, model.layers.{num_hidden_layers}:
    enorm, hnorm and eh_proj (h, 2h) joining the embedding and the hidden state,
    shared_head.norm, for the latent-attention families its own embed_tokens and
    shared_head.head, and some of a decoder layer's (FP8 where the checkpoint's are).
    transformers does not load them (its _keys_to_ignore_on_load_unexpected names the published
    models' layer index), and a text engine must skip them knowingly."""
    gen = torch.Generator().manual_seed(seed + 3)
    h, v, e = text_cfg.hidden_size, text_cfg.vocab_size, text_cfg.n_routed_experts
    prefix = f"model.layers.{text_cfg.num_hidden_layers}."
    shapes = {"enorm.weight": (h,), "hnorm.weight": (h,), "eh_proj.weight": (h, 2 * h),
              "shared_head.norm.weight": (h,), "input_layernorm.weight": (h,),
              "mlp.gate.weight": (e, h)}
    if text_cfg.model_type == "glm4_moe":
        attn = "self_attn.q_proj.weight"
        shapes[attn] = (text_cfg.num_attention_heads * text_cfg.head_dim, h)
    else:
        attn = "self_attn.kv_a_proj_with_mqa.weight"
        shapes[attn] = (text_cfg.kv_lora_rank + text_cfg.qk_rope_head_dim, h)
        shapes.update({"embed_tokens.weight": (v, h), "shared_head.head.weight": (v, h)})
    tensors = {}
    for key, shape in shapes.items():
        base = 1.0 if key.endswith("norm.weight") else 0.0
        tensors[prefix + key] = (base + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
    tensors[prefix + "mlp.gate.e_score_correction_bias"] = 0.1 * torch.randn(e, generator=gen)
    if fp8_block is not None:
        q, scale_inv, _ = fp8_block_quantize(tensors[prefix + attn].float(), fp8_block)
        tensors[prefix + attn] = q
        tensors[f"{prefix}{attn}_scale_inv"] = scale_inv
    return tensors


def write_published_tensors(out_dir, text_cfg, spec, seed, biases, fp8):
    """Finishes a biased-router checkpoint as published: the correction biases F32; for FP8, the
    codes and their weight_scale_inv in place of the dequantized weights that save_pretrained
    wrote, and quantization_config in config.json as DeepSeek writes it; the MTP layer's
    tensors."""
    from safetensors.torch import load_file
    path = out_dir / "model.safetensors"
    tensors = load_file(path)
    for name, bias in biases.items():
        assert name in tensors, f"save_pretrained did not write {name}"
        tensors[name] = bias
    if fp8 is not None:
        for name, (q, scale_inv) in fp8.items():
            values = fp8_dequantize(q, scale_inv, spec["fp8"])
            saved = tensors[name].float()  # the dequantized weights, rounded to the dtype
            assert ((saved - values).abs() <= values.abs() * 2 ** -8).all(), \
                f"{name} is not the weight that was quantized"
            tensors[name] = q
            tensors[f"{name}_scale_inv"] = scale_inv
    if spec.get("mtp"):
        tensors.update(mtp_layer_tensors(text_cfg, spec["dtype"], seed, spec.get("fp8")))
    save_file(tensors, path, metadata={"format": "pt"})
    if fp8 is not None:
        cfg_path = out_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                      "quant_method": "fp8", "weight_block_size": list(spec["fp8"])}
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def fp8_dequantize(q, scale_inv, block):
    """FP8 codes (out, in) times their blocks' weight_scale_inv, in f32."""
    b0, b1 = block
    out, inp = q.shape
    scale = scale_inv.repeat_interleave(b0, 0).repeat_interleave(b1, 1)[:out, :inp]
    return q.float() * scale


def fp8_block_quantize(w, block):
    """(out, in) f32 -> FP8 E4M3 codes (out, in), F32 weight_scale_inv (ceil(out / b0),
    ceil(in / b1)), and the f32 values they decode to. Each block's scale maps its largest |w|
    to FP8's largest value, 448; the last row and column of blocks may be partial."""
    b0, b1 = block
    out, inp = w.shape
    n0, n1 = -(-out // b0), -(-inp // b1)
    padded = torch.zeros(n0 * b0, n1 * b1)
    padded[:out, :inp] = w.float()
    amax = padded.reshape(n0, b0, n1, b1).abs().amax(dim=(1, 3))
    scale_inv = (amax / FP8_MAX).clamp_min(1e-12).contiguous()
    scale = scale_inv.repeat_interleave(b0, 0).repeat_interleave(b1, 1)[:out, :inp]
    q = (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()
    return q, scale_inv, fp8_dequantize(q, scale_inv, block)


@torch.no_grad()
def fp8_quantize(model, block):
    """Quantizes every Linear weight of the decoder layers to FP8 (fp8_block_quantize), each
    routed expert's gate, up and down projection on its own (they are stored one tensor per
    expert and projection), and puts back in the model the values they decode to. The routers
    (not Linear modules) stay as they are. Returns {hub name: (codes, weight_scale_inv)}."""
    stored = {}
    for li, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{li}."
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                q, scale_inv, values = fp8_block_quantize(module.weight, block)
                module.weight.copy_(values)
                stored[f"{prefix}{name}.weight"] = (q, scale_inv)
        experts = getattr(layer.mlp, "experts", None)
        if experts is None:
            continue
        inter = experts.intermediate_dim
        for e in range(experts.num_experts):
            # gate_up_proj's rows are gate's, then up's: the forward's chunk(2)
            for proj, param, rows in (("gate_proj", experts.gate_up_proj, slice(0, inter)),
                                      ("up_proj", experts.gate_up_proj, slice(inter, 2 * inter)),
                                      ("down_proj", experts.down_proj, slice(None))):
                q, scale_inv, values = fp8_block_quantize(param[e, rows], block)
                param[e, rows] = values
                stored[f"{prefix}mlp.experts.{e}.{proj}.weight"] = (q, scale_inv)
    assert not any(k.endswith("mlp.gate.weight") for k in stored)
    return stored


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


# Gemma 4 26B-A4B's text model at 4 of its 30 layers (three sliding, then the full one), with its
# vocabulary: a dense MLP and 128 experts choosing 8 in every layer, written as google publishes
# it but without the vision tower (vision_config null).
GEMMA4_26B_4L = dict(vocab_size=262144, hidden_size=2816, intermediate_size=2112,
                     num_hidden_layers=4, layer_types=["sliding_attention"] * 3 + ["full_attention"],
                     num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                     num_global_key_value_heads=2, global_head_dim=512, attention_k_eq_v=True,
                     enable_moe_block=True, num_experts=128, top_k_experts=8,
                     moe_intermediate_size=704, sliding_window=1024, final_logit_softcapping=30.0,
                     max_position_embeddings=262144, rms_norm_eps=1e-6, tie_word_embeddings=True,
                     hidden_size_per_layer_input=0, num_kv_shared_layers=0,
                     hidden_activation="gelu_pytorch_tanh", use_bidirectional_attention="vision")


def make_bench_model(name, shape, out_dir, dtype=torch.float32, family="qwen3_moe"):
    torch.manual_seed(0)
    cfg = make_config(family, shape)
    auto = AutoModelForImageTextToText if family in VISION_FAMILIES else AutoModelForCausalLM
    model = auto.from_config(
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
    ap.add_argument("--gemma4-26b-4l", metavar="DIR",
                    help="write Gemma 4 26B-A4B's shape at 4 layers (random weights, bf16) to DIR")
    args = ap.parse_args()
    if args.q3_mini:
        make_bench_model("q3-mini", Q3_MINI, args.q3_mini)
        return
    if args.q3_30b_4l:
        # Made in bf16: 2.6 G parameters would take 10 GB as f32.
        make_bench_model("q3-30b-4l", Q3_30B_4L, args.q3_30b_4l, torch.bfloat16)
        return
    if args.gemma4_26b_4l:
        # Made in bf16 too: 4.0 G parameters would take 16 GB as f32.
        make_bench_model("gemma4-26b-4l", GEMMA4_26B_4L, args.gemma4_26b_4l, torch.bfloat16,
                         family="gemma4")
        return
    for i, (name, spec) in enumerate(FIXTURES_SPEC.items()):
        if not args.only or name in args.only:
            make_fixture(name, spec, seed=spec.get("seed", 1000 + 17 * i))


if __name__ == "__main__":
    main()
