#!/usr/bin/env python3
"""GGUF test fixtures made by llama.cpp's own tools, with HF transformers reference outputs.

Writes tests/fixtures/gguf/ (about 10.6 MB; the folder is rebuilt from scratch):

  tiny-shakespeare-moe-{q4_0,q4_k_m}.gguf   the bundled model (models/tiny-shakespeare-moe, qwen3moe,
                                            f16 weights): convert_hf_to_gguf.py --outtype f16 (a
                                            temporary 11 MB file, checked bit for bit against the
                                            safetensors), then llama-quantize. --bundled-types
                                            picks the types: q8_0 (+5.9 MB) and f16 (+11 MB) are
                                            left out by default for the size budget; Q8_0 is still
                                            covered by gpt_oss-b-q8_0 and by the Q8_0 tensors the
                                            two quantizations contain.
  <fixture>-f32.gguf                        tests/fixtures/{qwen3_moe-a, mixtral-a, olmoe-a,
                                            granitemoe-a, gpt_oss-b}, convert_hf_to_gguf.py
                                            --outtype f32: lossless (gpt_oss-b's experts stay MXFP4
                                            as published, repacked to ggml's blocks).
  qwen2_moe-a-all-sparse-f32.gguf           qwen2_moe-a itself does not convert: llama.cpp's
                                            qwen2moe has no dense-FFN layer (mlp_only_layers=[1]
                                            fails with "Can not map tensor
                                            'model.layers.1.mlp.down_proj.weight'"); this is its
                                            spec and seed with every layer sparse, built in a
                                            temporary folder by tools/make_fixtures.py's functions.
  qwen3_moe-k-q4_k_m.gguf                   qwen3_moe-a widened to rows of 256 (K_QUANT_CONFIG),
                                            convert_hf_to_gguf.py --outtype f16, then
                                            llama-quantize Q4_K_M: experts in Q4_K and Q6_K.
  gpt_oss-b-q8_0.gguf                       convert_hf_to_gguf.py --outtype q8_0 (the one tiny
                                            fixture whose rows are all multiples of 32).
  gpt_oss-b-f32-split-0000{1,2,3}-of-00003.gguf
                                            --outtype f32 --split-max-tensors 14: a split set.
  <stem>.reference.safetensors              per GGUF (a split set under its stem): `tokens` (I64
                                            [T]), `logits` (F32 [T, vocab], HF's f32 forward at every
                                            position), `greedy` (I64 [12], HF's greedy continuation,
                                            eos off); the keys and lengths of the fixtures'
                                            reference.safetensors, and for a tiny fixture its very
                                            prompt. The bundled model's prompt: the first 12 ids of
                                            BUNDLED_PROMPT by its tokenizer.json.
  tokenizer_cases.json                      [{"text", "ids", ...}]: ids by the bundled model's
                                            tokenizer.json (HF tokenizers, the truth), and whether
                                            HF's tokenizer rebuilt from the GGUF
                                            (AutoTokenizer.from_pretrained(dir, gguf_file=...)) and
                                            llama.cpp's llama_tokenize (parse_special) agree.
  manifest.json                             per GGUF: files (bytes, sha256, tensor count), how it
                                            was made, tensor types and ggml shapes, metadata, the HF
                                            config its reference ran under, and the checks below.

References: HF transformers in f32 (eager attention, eager experts) over the weights gguf-py
(gguf.dequantize) reads from that very GGUF, mapped back to the source checkpoint's hub layout
(llama.cpp's q/k row permutation undone for the `llama` and `granitemoe` archs, stacked experts
split per expert, gpt-oss's gate/up interleaved again) and loaded by from_pretrained with an HF
config made from the GGUF metadata alone, plus, for what a GGUF cannot say, what llama.cpp does
for that arch (qwen3moe renormalizes the top-k weights, qwen2moe and olmoe do not, gpt-oss clamps
SwiGLU at 7.0 and truncates YaRN's correction range, olmoe has no qkv clipping). Two fixtures say
more than their GGUF can carry: olmoe-a (clip_qkv 1.5) and gpt_oss-b (swiglu_limit 2.0, YaRN
truncate false); their GGUF references follow the GGUF, i.e. llama.cpp, and differ from the
fixtures' own reference.safetensors, which manifest.json shows (the same weights under the
source config reproduce those exactly).

transformers' own GGUF loading (from_pretrained(dir, gguf_file=...)) loads none of these as they
are in 5.23: qwen3moe and qwen2moe miss expert_feed_forward_length (wrong expert width), `llama`
is read as a dense Llama (Mixtral's experts dropped), gpt-oss fails parsing its rope keys, olmoe
and granitemoe are not supported. It is tried anyway, alone and given this script's config, and
recorded as a check (given the config it matches exactly for qwen3moe).

Checks, in manifest.json: F32 files' dequantized tensors bit-identical to the source checkpoint;
gguf-py's dequantization bit-identical to ggml's own to_float for every tensor of every file; the
source model's outputs; llama.cpp's own forward and greedy continuation (a small C program
compiled here against the built libllama; f32 KV cache, no flash attention): F32 files agree to
~3e-6, MXFP4 and quantized files to ~0.03-0.2, as llama.cpp's CPU kernels quantize the
activations for those weights; each reference's greedy margins say how much error a step takes.

Tokenizers: the tiny fixtures have none, and 167..229 ids where the bundled byte-level BPE has
2048 (3 specials, 256 byte symbols, merges); the converter pads a vocabulary but refuses one larger
than the model's, and llama.cpp refuses a gpt2 tokenizer without merges. So each fixture is
converted from a temporary copy (config.json and model.safetensors as they are: nothing in the
weights changes) with a tokenizer cut from the bundled one to exactly vocab_size ids: its first
vocab_size - 8 ids (specials, then byte symbols), then the merged tokens of its first 8 merges
whose parts are in (renumbered to the top 8 ids); its tokenizer_config.json names no special
tokens, so bos/eos/pad come from the fixture's config.json. Such a tokenizer cannot encode every
text; these fixtures are tested by ids.

Patched: nothing in llama.cpp. convert_hf_to_gguf.py runs unmodified in a child python (the
wrapper of tools/llama_convert.py) with one function replaced in memory:
conversion.base.TextModel.get_vocab_base_pre, which refuses pre-tokenizer hashes it does not know,
returns "gpt-2" for them, after checking that the tokenizer is byte-level BPE with
the GPT-2 split regex and no normalizer.

Deterministic: fixed prompts, greedy decoding, stable temporary names (the converter derives
general.name from the folder name); the converter and llama-quantize write no dates. Reruns give
byte-identical files.

Usage (about a minute on 2 cores; pip install -r tools/requirements.txt, accelerate included for
transformers' GGUF loading):
    ~/moe-anchors/venv/bin/python tools/make_gguf_fixtures.py \\
        [--llama ~/moe-anchors/llama] [--out tests/fixtures/gguf] \\
        [--bundled-types q4_0 q4_k_m] [--no-llama-check] [--keep-work]
--llama: llama.cpp's tree (convert_hf_to_gguf.py, conversion/, gguf-py/, include/, build/bin with
llama-quantize and libllama). The converter imports that tree's gguf-py, as it does when run
directly; the references read the GGUFs with the installed gguf (gguf==0.19.0, the same version).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from llama_convert import convert

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BUNDLED = ROOT / "models" / "tiny-shakespeare-moe"
BUNDLED_NAME = "tiny-shakespeare-moe"
TINY = ["qwen3_moe-a", "qwen2_moe-a", "mixtral-a", "olmoe-a", "granitemoe-a", "gpt_oss-b"]
Q8_FIXTURE = "gpt_oss-b"     # the only tiny fixture whose rows are all multiples of 32
SPLIT_FIXTURE = "gpt_oss-b"  # the smallest
SPLIT_COUNT = 3
GREEDY_LEN = 12              # as tools/make_fixtures.py
# Of a dozen famous lines, the one whose 12-step greedy continuation has the widest smallest
# margin (top-1 minus top-2 logit) on both quantizations: 0.23 (Q4_0) and 0.08 (Q4_K_M).
BUNDLED_PROMPT = "HAMLET:\nTo be, or not to be: that is the question:"
BUNDLED_PROMPT_IDS = 12

TOKENIZER_TEXTS = [
    "ROMEO:\nBut soft, what light through yonder window breaks?",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?",
    "To be, or not to be: that is the question.",
    "I'll not, he's gone; they're here, we've done, I'd say, I'm sure.",
    "HE'S GONE. You'RE sure? 'Tis so.",
    "  two spaces,   three, \ttab, and\nnewline\n\n\nthree newlines   ",
    "Numbers: 1 12 123 1234 12345 3.14 1,000,000",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe",
    "\u4f60\u597d\uff0c\u4e16\u754c \u3053\u3093\u306b\u3061\u306f \u043f\u0440\u0438\u0432\u0435\u0442",
    "emoji \U0001f680 \U0001f600\u200d \u2705 \U0001f999\U0001f999",
    "<|im_start|>user\nSpeak, good sir.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "a<|im_end|>b",
    "",
    " ",
    "\n",
    "...!!!???---===```'''\"\"\"",
]



def log(msg):
    print(msg, flush=True)


def quantize(llama, src, dst, qtype):
    env = dict(os.environ, LD_LIBRARY_PATH=str(llama / "build" / "bin"))
    r = subprocess.run([str(llama / "build" / "bin" / "llama-quantize"), str(src), str(dst),
                        qtype.upper(), "2"], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"llama-quantize {qtype} failed")
    return [l.strip() for l in (r.stdout + r.stderr).splitlines()
            if "fallback" in l.lower() or "not divisible" in l.lower()]


# ---------------------------------------------------------------------------------------------
# Temporary HF checkpoints to convert


def fixture_tokenizer(src_dir, dst_dir, vocab_size, n_merges=8):
    """A byte-level BPE of exactly vocab_size ids cut from the bundled tokenizer: its first
    vocab_size - n_merges ids (3 specials, then byte symbols in its own order), then the merged
    tokens of its first n_merges merges (in priority order) whose two parts are already in,
    renumbered to the top ids. Without merges llama.cpp refuses a gpt2 tokenizer ("cannot find
    tokenizer merges"), hence the few merges. The tokenizer_config.json names no special
    tokens, so bos/eos/pad come from the fixture's config.json."""
    tok = json.loads((src_dir / "tokenizer.json").read_text())
    keep = vocab_size - n_merges
    vocab = {s: i for s, i in tok["model"]["vocab"].items() if i < keep}
    merges = []
    for a, b in tok["model"]["merges"]:
        if len(merges) == n_merges:
            break
        if a in vocab and b in vocab and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append([a, b])
    assert len(merges) == n_merges and sorted(vocab.values()) == list(range(vocab_size))
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = merges
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < keep]
    (dst_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=1) + "\n")
    (dst_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
         "model_max_length": 128}, indent=2) + "\n")
    return [" ".join(m) for m in merges]


def make_variant(dst, base, overrides):
    """Fixture `base` of tools/make_fixtures.py with its config changed by `overrides`, built by
    that script's own functions with `base`'s spec and seed; returns its reference outputs."""
    sys.path.insert(0, str(ROOT / "tools"))
    import make_fixtures as mf
    names = list(mf.FIXTURES_SPEC)
    spec = mf.FIXTURES_SPEC[base]
    seed = 1000 + 17 * names.index(base)
    torch.manual_seed(seed)
    cfg = mf.make_config(spec["family"], dict(spec["config"], **overrides), spec.get("rope"))
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(
        cfg, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager").eval()
    mf.init_weights(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(2, cfg.vocab_size, (mf.PROMPT_LEN,), generator=gen)
    logits, greedy = hf_outputs(model, tokens)
    mf.save(model, dst, spec["dtype"], spec["style"])
    return {"tokens": tokens, "logits": logits, "greedy": greedy}


def make_qwen2_moe_all_sparse(dst):
    """qwen2_moe-a with every layer sparse (mlp_only_layers=[]): llama.cpp's qwen2moe has no
    dense-FFN layers, so qwen2_moe-a (mlp_only_layers=[1]) and qwen2_moe-b (decoder_sparse_step
    2) do not convert ("Can not map tensor 'model.layers.1.mlp.down_proj.weight'")."""
    return make_variant(dst, "qwen2_moe-a", dict(mlp_only_layers=[]))


# qwen3_moe-a widened so that every matrix row is whole K-quant super-blocks of 256 (hidden,
# expert width and heads x head_dim all 256): llama-quantize Q4_K_M then keeps the experts in
# Q4_K and Q6_K, as in the files users download, where the other fixtures' rows fall back to
# 32-weight types.
K_QUANT_FIXTURE = "qwen3_moe-k"
K_QUANT_CONFIG = dict(hidden_size=256, intermediate_size=256, moe_intermediate_size=256,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64)


# ---------------------------------------------------------------------------------------------
# GGUF reading


def split_paths(path):
    """A GGUF, or the files of a split set named like its first one."""
    if "-00001-of-" not in path.name:
        return [path]
    n = int(path.stem.rsplit("-of-", 1)[1])
    return [path.with_name(path.name.replace("-00001-of-", f"-{i:05d}-of-")) for i in range(1, n + 1)]


def read_gguf(path):
    """(metadata of the first file, {name: (ggml type name, ggml shape, f32 array)}) for a GGUF
    or a split set. Arrays are gguf-py's dequantization, numpy order (ggml shape reversed)."""
    import gguf
    meta, tensors = None, {}
    for p in split_paths(path):
        r = gguf.GGUFReader(p)
        if meta is None:
            meta = {}
            for k, f in r.fields.items():
                if k.startswith("GGUF."):
                    continue
                meta[k] = f.contents()
        for t in r.tensors:
            arr = gguf.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            shape = [int(x) for x in t.shape]
            assert list(arr.shape) == shape[::-1], (t.name, arr.shape, shape)
            tensors[t.name] = (t.tensor_type.name, shape, np.ascontiguousarray(arr))
    return meta, tensors


# ---------------------------------------------------------------------------------------------
# GGUF -> HF config and hub-layout tensors


def hf_config_from_gguf(meta, tensors):
    """The HF config a GGUF stands for: its metadata, and for what it does not carry, what
    llama.cpp does for that arch (its fixed behaviour, e.g. qwen3moe renormalizes the top-k
    weights, gpt-oss clamps SwiGLU at 7 and truncates YaRN's correction range)."""
    arch = meta["general.architecture"]
    g = lambda k, d=None: meta.get(f"{arch}.{k}", d)
    n_vocab = len(meta["tokenizer.ggml.tokens"])
    assert tensors["token_embd.weight"][1][1] == n_vocab
    heads, hidden = g("attention.head_count"), g("embedding_length")
    c = dict(
        vocab_size=n_vocab, hidden_size=hidden, num_hidden_layers=g("block_count"),
        num_attention_heads=heads, num_key_value_heads=g("attention.head_count_kv"),
        rms_norm_eps=g("attention.layer_norm_rms_epsilon"),
        max_position_embeddings=g("context_length"),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    head_dim = g("attention.key_length") or g("rope.dimension_count") or hidden // heads
    assert head_dim == (g("attention.value_length") or head_dim)
    rope = {"rope_type": "default", "rope_theta": g("rope.freq_base")}
    bias = "blk.0.attn_q.bias" in tensors
    if arch == "qwen3moe":
        c.update(model_type="qwen3_moe", head_dim=head_dim, intermediate_size=g("feed_forward_length"),
                 num_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"),
                 moe_intermediate_size=g("expert_feed_forward_length"), norm_topk_prob=True,
                 attention_bias=bias, mlp_only_layers=[], decoder_sparse_step=1)
    elif arch == "qwen2moe":
        assert head_dim == hidden // heads and bias
        c.update(model_type="qwen2_moe", intermediate_size=g("feed_forward_length"),
                 num_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"),
                 moe_intermediate_size=g("expert_feed_forward_length"),
                 shared_expert_intermediate_size=g("expert_shared_feed_forward_length"),
                 norm_topk_prob=False, mlp_only_layers=[], decoder_sparse_step=1)
    elif arch == "llama":
        assert g("expert_count"), "a dense llama: not one of these fixtures"
        assert not bias
        c.update(model_type="mixtral", head_dim=head_dim, intermediate_size=g("feed_forward_length"),
                 num_local_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"),
                 sliding_window=None)
    elif arch == "olmoe":
        assert head_dim == hidden // heads and not bias
        c.update(model_type="olmoe", intermediate_size=g("feed_forward_length"),
                 num_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"),
                 norm_topk_prob=False, clip_qkv=g("attention.clamp_kqv"))
    elif arch == "granitemoe":
        assert head_dim == hidden // heads
        c.update(model_type="granitemoe", intermediate_size=g("feed_forward_length"),
                 num_local_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"),
                 attention_bias=bias, embedding_multiplier=g("embedding_scale"),
                 attention_multiplier=g("attention.scale"), residual_multiplier=g("residual_scale"),
                 logits_scaling=g("logit_scale"))
    elif arch == "gpt-oss":
        n = g("block_count")
        c.update(model_type="gpt_oss", head_dim=head_dim, intermediate_size=g("expert_feed_forward_length"),
                 num_local_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"),
                 sliding_window=g("attention.sliding_window"), swiglu_limit=7.0,
                 layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)])
        if g("rope.scaling.type") == "yarn":
            rope.update(rope_type="yarn", factor=g("rope.scaling.factor"),
                        original_max_position_embeddings=g("rope.scaling.original_context_length"),
                        beta_fast=g("rope.scaling.yarn_beta_fast"),
                        beta_slow=g("rope.scaling.yarn_beta_slow"), truncate=True)
    else:
        raise SystemExit(f"no HF mapping for GGUF arch {arch}")
    c["rope_parameters"] = rope
    return c


def unpermute(w, n_head):
    """Undoes convert_hf_to_gguf.py's LlamaModel.permute (q/k rows regrouped for ggml's RoPE)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hub_tensors(meta, tensors, cfg):
    """The GGUF's tensors back in the hub layout of the checkpoint they came from."""
    arch = meta["general.architecture"]
    t = {k: v[2] for k, v in tensors.items()}
    used = set()

    def take(name):
        used.add(name)
        return t[name]

    out = {"model.embed_tokens.weight": take("token_embd.weight"),
           "model.norm.weight": take("output_norm.weight")}
    if "output.weight" in t:
        out["lm_head.weight"] = take("output.weight")
    moe = "block_sparse_moe" if arch in ("llama", "granitemoe") else "mlp"
    for i in range(cfg["num_hidden_layers"]):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        plain = {"attn_norm.weight": "input_layernorm.weight",
                 "ffn_norm.weight": "post_attention_layernorm.weight",
                 "post_attention_norm.weight": "post_attention_layernorm.weight",
                 "attn_q_norm.weight": "self_attn.q_norm.weight",
                 "attn_k_norm.weight": "self_attn.k_norm.weight",
                 "attn_sinks.weight": "self_attn.sinks",
                 "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
                 "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
                 "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
                 "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight"}
        for proj, hp in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"),
                         ("attn_output", "o_proj")):
            for kind in ("weight", "bias"):
                plain[f"{proj}.{kind}"] = f"self_attn.{hp}.{kind}"
        router = {"llama": "block_sparse_moe.gate", "granitemoe": "block_sparse_moe.router.layer",
                  "gpt-oss": "mlp.router"}.get(arch, "mlp.gate")
        plain["ffn_gate_inp.weight"] = f"{router}.weight"
        plain["ffn_gate_inp.bias"] = f"{router}.bias"
        for g_name, h_name in plain.items():
            if b + g_name in t:
                out[h + h_name] = take(b + g_name)
        if arch in ("llama", "granitemoe"):  # LlamaModel.permute, undone
            for proj, n in (("q_proj", cfg["num_attention_heads"]), ("k_proj", cfg["num_key_value_heads"])):
                for kind in ("weight", "bias"):
                    k = f"{h}self_attn.{proj}.{kind}"
                    if k in out:
                        out[k] = unpermute(out[k], n)
        gate, up, down = (take(f"{b}ffn_{p}_exps.weight") for p in ("gate", "up", "down"))
        n_exp = gate.shape[0]  # gate, up: [E, I, H]; down: [E, H, I]
        if arch == "granitemoe":
            out[h + "block_sparse_moe.input_linear.weight"] = np.concatenate([gate, up], axis=1)
            out[h + "block_sparse_moe.output_linear.weight"] = down
        elif arch == "gpt-oss":  # dense HF layout: gate_up [E, H, 2I], gate/up interleaved
            gu = np.empty((n_exp, gate.shape[2], 2 * gate.shape[1]), np.float32)
            gu[:, :, 0::2], gu[:, :, 1::2] = gate.transpose(0, 2, 1), up.transpose(0, 2, 1)
            gub = np.empty((n_exp, 2 * gate.shape[1]), np.float32)
            gub[:, 0::2], gub[:, 1::2] = take(f"{b}ffn_gate_exps.bias"), take(f"{b}ffn_up_exps.bias")
            out[h + "mlp.experts.gate_up_proj"] = gu
            out[h + "mlp.experts.gate_up_proj_bias"] = gub
            out[h + "mlp.experts.down_proj"] = np.ascontiguousarray(down.transpose(0, 2, 1))
            out[h + "mlp.experts.down_proj_bias"] = take(f"{b}ffn_down_exps.bias")
        else:
            names = ("w1", "w3", "w2") if arch == "llama" else ("gate_proj", "up_proj", "down_proj")
            for e in range(n_exp):
                for w, name in zip((gate, up, down), names):
                    out[f"{h}{moe}.experts.{e}.{name}.weight"] = w[e]
    left = set(t) - used
    assert not left, f"GGUF tensors not mapped back: {sorted(left)}"
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# HF forward


@torch.no_grad()
def hf_outputs(model, tokens):
    logits = model(tokens[None]).logits[0].float()
    out = model.generate(tokens[None], max_new_tokens=GREEDY_LEN, min_new_tokens=GREEDY_LEN,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    return logits.contiguous(), out[0, len(tokens):].contiguous()


@torch.no_grad()
def greedy_margins(model, tokens, greedy):
    """Per greedy step, the gap between the chosen token's logit and the runner-up's, from one
    forward over prompt + continuation: how much error a step can take before it flips."""
    seq = torch.cat([tokens, greedy])[None]
    steps = model(seq).logits[0, len(tokens) - 1:-1].float()
    top = steps.topk(2, dim=-1)
    assert torch.equal(top.indices[:, 0], greedy), "greedy differs from a full forward's argmax"
    return [round(float(x), 4) for x in top.values[:, 0] - top.values[:, 1]]


def hf_from_hub(cfg, hub, work):
    """The HF class over hub-layout tensors, loaded by from_pretrained as a checkpoint would be,
    with the config `cfg` (keyword arguments of AutoConfig.for_model)."""
    from transformers import AutoConfig
    cfg = dict(cfg)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return hf_from_hub_config_json(config.to_dict(), hub, work)


def hf_from_hub_config_json(config_json, hub, work):
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "config.json").write_text(json.dumps(config_json, indent=2))
    save_file(hub, work / "model.safetensors", metadata={"format": "pt"})
    model, info = AutoModelForCausalLM.from_pretrained(
        work, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"HF load of the dequantized weights: {bad}"
    return model.eval()


def transformers_gguf(path, config=None):
    """AutoModelForCausalLM.from_pretrained(dir, gguf_file=...): ("ok", model) or (why not, None)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    try:
        kw = {"config": config} if config is not None else {}
        model, info = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager", output_loading_info=True, ignore_mismatched_sizes=True, **kw)
    except Exception as e:  # noqa: BLE001 -- reported, not hidden
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", None
    finally:
        hf_logging.set_verbosity_warning()
    bad = {k: sorted(map(str, v))[:3] for k, v in info.items() if v}
    if bad:
        return f"loads as {type(model).__name__} with {bad}", None
    return "ok", model.eval()


# ---------------------------------------------------------------------------------------------
# llama.cpp's own forward, as a check (a small C program against the built libllama)

LLAMA_C = r"""
#include "llama.h"
#include "gguf.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void quiet(enum ggml_log_level l, const char *t, void *u) { (void)l; (void)t; (void)u; }
static int unhex(const char *h, char *out) {
    int n = (int)strlen(h) / 2;
    for (int i = 0; i < n; i++) { unsigned v; sscanf(h + 2 * i, "%2x", &v); out[i] = (char)v; }
    out[n] = 0;
    return n;
}
/* fwd model.gguf out.bin n_greedy ids...  -> f32 logits [n, vocab], then i32 greedy ids
   tok model.gguf out.bin hex...           -> per text: i32 count, i32 ids (parse_special)
   deq file.gguf out.bin                   -> every tensor by ggml's own to_float, file order */
int main(int argc, char **argv) {
    if (strcmp(argv[1], "deq") == 0) {
        struct ggml_context *gctx = NULL;
        struct gguf_init_params gp = { false, &gctx };
        struct gguf_context *g = gguf_init_from_file(argv[2], gp);
        if (!g) { fprintf(stderr, "gguf load failed\n"); return 2; }
        FILE *f = fopen(argv[3], "wb");
        for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
            struct ggml_tensor *t = ggml_get_tensor(gctx, gguf_get_tensor_name(g, i));
            int64_t ne = ggml_nelements(t);
            float *v = malloc(ne * sizeof(float));
            if (t->type == GGML_TYPE_F32) memcpy(v, t->data, ne * sizeof(float));
            else ggml_get_type_traits(t->type)->to_float(t->data, v, ne);
            fwrite(v, sizeof(float), ne, f);
            free(v);
        }
        fclose(f);
        return 0;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = strcmp(argv[1], "tok") == 0;
    struct llama_model *model = llama_model_load_from_file(argv[2], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 2; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    FILE *f = fopen(argv[3], "wb");
    if (mp.vocab_only) {
        static char text[4096]; static llama_token ids[4096];
        for (int a = 4; a < argc; a++) {
            int len = unhex(argv[a], text);
            int n = llama_tokenize(vocab, text, len, ids, 4096, false, true);
            fwrite(&n, sizeof(int), 1, f);
            if (n > 0) fwrite(ids, sizeof(llama_token), n, f);
        }
        fclose(f);
        return 0;
    }
    int n = argc - 5, n_greedy = atoi(argv[4]);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 64; cp.n_batch = 64; cp.n_ubatch = 64; cp.n_threads = 2; cp.n_threads_batch = 2;
    /* f32 K/V cache, no flash attention (whose CPU path rounds to f16): f32 weights then match HF to ~1e-6 */
    cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32; cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "context failed\n"); return 3; }
    int n_vocab = llama_vocab_n_tokens(vocab);
    struct llama_batch b = llama_batch_init(64, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = atoi(argv[5 + i]); b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 4; }
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, f);
    int pos = n, last = n - 1;
    for (int s = 0; s < n_greedy; s++) {
        const float *l = llama_get_logits_ith(ctx, last);
        int best = 0;
        for (int v = 1; v < n_vocab; v++) if (l[v] > l[best]) best = v;
        fwrite(&best, sizeof(int), 1, f);
        b.n_tokens = 1; b.token[0] = best; b.pos[0] = pos++; b.n_seq_id[0] = 1; b.seq_id[0][0] = 0; b.logits[0] = 1;
        if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 4; }
        last = 0;
    }
    fclose(f);
    llama_batch_free(b); llama_free(ctx); llama_model_free(model); llama_backend_free();
    return 0;
}
"""


def build_llama_check(llama, work):
    cc = shutil.which("cc")
    if cc is None:
        return None
    src, exe = work / "llama_check.c", work / "llama_check"
    src.write_text(LLAMA_C)
    lib = llama / "build" / "bin"
    r = subprocess.run([cc, "-O1", "-o", str(exe), str(src), f"-I{llama / 'include'}",
                        f"-I{llama / 'ggml' / 'include'}", f"-L{lib}", "-lllama", "-lggml-base", f"-Wl,-rpath,{lib}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log(f"llama.cpp check not built: {r.stderr.strip()[:300]}")
        return None
    return exe


def llama_outputs(exe, path, tokens, vocab, work):
    out = work / "llama_out.bin"
    r = subprocess.run([str(exe), "fwd", str(path), str(out), str(GREEDY_LEN), *map(str, tokens.tolist())],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"failed: {r.stderr.strip()[:200]}", None, None
    raw = out.read_bytes()
    n = len(tokens) * vocab
    logits = np.frombuffer(raw[:4 * n], np.float32).reshape(len(tokens), vocab)
    greedy = np.frombuffer(raw[4 * n:], np.int32)
    return "ok", torch.from_numpy(logits.copy()), torch.from_numpy(greedy.astype(np.int64))


def ggml_dequant_check(exe, path, tensors, work):
    """Every tensor as ggml's own to_float decodes it, against gguf-py's dequantization."""
    import gguf
    out, same, differ = work / "ggml_deq.bin", 0, []
    for p in split_paths(path):
        r = subprocess.run([str(exe), "deq", str(p), str(out)], capture_output=True, text=True)
        if r.returncode != 0:
            return f"failed: {r.stderr.strip()[:200]}"
        raw, at = np.fromfile(out, np.float32), 0
        for t in gguf.GGUFReader(p).tensors:
            mine = tensors[t.name][2].reshape(-1)
            theirs = raw[at:at + mine.size]
            at += mine.size
            if np.array_equal(mine, theirs):
                same += 1
            else:
                differ.append(f"{t.name} {t.tensor_type.name} max diff {np.abs(mine - theirs).max():.3g}")
        assert at == raw.size
    return f"{same} tensors bit-identical to gguf-py" if not differ else differ


def llama_tokenize(exe, path, texts, work):
    out = work / "llama_tok.bin"
    r = subprocess.run([str(exe), "tok", str(path), str(out), *[t.encode().hex() or "" for t in texts]],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    raw, ids, at = np.frombuffer(out.read_bytes(), np.int32), [], 0
    for _ in texts:
        n = int(raw[at])
        ids.append([int(x) for x in raw[at + 1:at + 1 + max(n, 0)]] if n >= 0 else None)
        at += 1 + max(n, 0)
    return ids


# ---------------------------------------------------------------------------------------------
# Driver


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata_summary(meta):
    out = {}
    for k, v in meta.items():
        if isinstance(v, list) and len(v) > 8:
            v = f"[{len(v)} items]"
        elif isinstance(v, str) and len(v) > 120:
            v = v[:117] + "..."
        elif isinstance(v, float):
            v = float(np.float32(v))
        out[k] = v
    return out


def max_diff(a, b):
    return float((a.float() - b.float()).abs().max())


def source_tensors(src_dir):
    from safetensors import safe_open
    out = {}
    for f in sorted(src_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out


def compare_to_source(hub, src_dir):
    """Bit-for-bit comparison of the dequantized F32 GGUF with the source checkpoint (MXFP4
    experts, stored packed in the source, excepted)."""
    src = source_tensors(src_dir)
    packed = {k for k in src if k.endswith(("_blocks", "_scales"))}
    unpacked = {k for k in hub if k.endswith(("experts.gate_up_proj", "experts.down_proj"))} if packed else set()
    assert set(src) - packed == set(hub) - unpacked, sorted(set(src) ^ set(hub))
    differ = [k for k in set(src) - packed if not np.array_equal(src[k].float().numpy(), hub[k])]
    assert not differ, f"F32 GGUF differs from the source in {differ}"
    return f"{len(set(src) - packed)} tensors bit-identical" + (
        f" ({len(packed)} packed MXFP4 tensors not compared)" if packed else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama", type=Path, default=Path.home() / "moe-anchors" / "llama",
                    help="llama.cpp tree: convert_hf_to_gguf.py, conversion/, gguf-py/, build/bin")
    ap.add_argument("--out", type=Path, default=FIXTURES / "gguf")
    ap.add_argument("--bundled-types", nargs="+", default=["q4_0", "q4_k_m"],
                    choices=["q8_0", "q4_0", "q4_k_m", "f16"],
                    help="llama-quantize types for the bundled model (q8_0 adds 5.9 MB, f16 11 MB)")
    ap.add_argument("--no-llama-check", action="store_true",
                    help="skip the comparison with llama.cpp's own forward and tokenizer")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    llama, out = args.llama.expanduser().resolve(), args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="make_gguf_fixtures-"))
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    # (gguf, source, how it was made, tokens, source dir, source reference outputs)
    jobs = []

    # The bundled model, through an F16 GGUF (exact: its weights are f16).
    src = work / BUNDLED_NAME
    src.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"):
        shutil.copy(BUNDLED / f, src / f)
    f16 = work / f"{BUNDLED_NAME}-f16.gguf"
    convert(llama, src, f16, "f16")
    ids = Tokenizer.from_file(str(BUNDLED / "tokenizer.json")).encode(BUNDLED_PROMPT).ids
    tokens = torch.tensor(ids[:BUNDLED_PROMPT_IDS], dtype=torch.int64)
    # The F16 GGUF holds exactly the source weights; the source model's own outputs, to show
    # how far each quantization moves them.
    meta, tensors = read_gguf(f16)
    cfg = hf_config_from_gguf(meta, tensors)
    hub = hub_tensors(meta, tensors, cfg)
    f16_check = compare_to_source(hub, src)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(BUNDLED, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager").eval()
    logits, greedy = hf_outputs(model, tokens)
    bundled_ref = {"tokens": tokens, "logits": logits, "greedy": greedy}
    f16_model = hf_from_hub(cfg, hub, work / "hf")
    f16_logits, f16_greedy = hf_outputs(f16_model, tokens)
    assert max_diff(f16_logits, logits) == 0 and torch.equal(f16_greedy, greedy), \
        "the F16 GGUF does not reproduce the bundled model"
    log(f"{BUNDLED_NAME}: F16 GGUF {f16.stat().st_size / 1e6:.1f} MB (temporary): {f16_check}, "
        f"HF outputs identical to the source model's")
    del meta, tensors, hub, model, f16_model
    for q in args.bundled_types:
        dst = out / f"{BUNDLED_NAME}-{q}.gguf"
        if q == "f16":
            shutil.copy(f16, dst)
            how = "convert_hf_to_gguf.py --outtype f16"
            fallbacks = []
        else:
            fallbacks = quantize(llama, f16, dst, q)
            how = f"convert_hf_to_gguf.py --outtype f16, then llama-quantize {q.upper()}"
        jobs.append(dict(gguf=dst, source=f"models/{BUNDLED_NAME}", how=how, tokens=tokens,
                         src_dir=src, src_ref=bundled_ref, fallbacks=fallbacks, prompt=BUNDLED_PROMPT,
                         exact=q == "f16",
                         note=f"the F16 GGUF it was quantized from: {f16_check}"))

    # The tiny fixtures, F32 (plus one Q8_0 and one split set).
    for name in TINY:
        src = work / name
        src.mkdir()
        note = None
        if name == "qwen2_moe-a":
            src = work / "qwen2_moe-a-all-sparse"
            src.mkdir()
            ref = make_qwen2_moe_all_sparse(src)
            name = src.name
            note = ("qwen2_moe-a rebuilt with mlp_only_layers=[] (same spec and seed, by "
                    "tools/make_fixtures.py's functions): llama.cpp's qwen2moe has no dense-FFN layers")
        else:
            for f in ("config.json", "model.safetensors"):
                shutil.copy(FIXTURES / name / f, src / f)
            ref = load_file(FIXTURES / name / "reference.safetensors")
        vocab = json.loads((src / "config.json").read_text())["vocab_size"]
        merges = fixture_tokenizer(BUNDLED, src, vocab)
        base = dict(source=f"tests/fixtures/{name}" if note is None else f"tests/fixtures/qwen2_moe-a (variant)",
                    tokens=ref["tokens"], src_dir=src, src_ref=ref, note=note, merges=merges)
        dst = out / f"{name}-f32.gguf"
        convert(llama, src, dst, "f32")
        jobs.append(dict(base, gguf=dst, how="convert_hf_to_gguf.py --outtype f32", exact=True))
        if name == Q8_FIXTURE:
            dst = out / f"{name}-q8_0.gguf"
            convert(llama, src, dst, "q8_0")
            jobs.append(dict(base, gguf=dst, how="convert_hf_to_gguf.py --outtype q8_0"))
        if name == SPLIT_FIXTURE:
            import gguf
            n = len(gguf.GGUFReader(out / f"{name}-f32.gguf").tensors)
            per = -(-n // SPLIT_COUNT)
            convert(llama, src, out / f"{name}-f32-split.gguf", "f32", ["--split-max-tensors", str(per)])
            first = out / f"{name}-f32-split-00001-of-{SPLIT_COUNT:05d}.gguf"
            assert all(p.exists() for p in split_paths(first)), sorted(out.glob(f"{name}-f32-split*"))
            jobs.append(dict(base, gguf=first, stem=f"{name}-f32-split", exact=True,
                             how=f"convert_hf_to_gguf.py --outtype f32 --split-max-tensors {per}"))

    # The K-quant fixture: f16, then Q4_K_M, as users' files are made.
    src = work / K_QUANT_FIXTURE
    src.mkdir()
    ref = make_variant(src, "qwen3_moe-a", K_QUANT_CONFIG)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    merges = fixture_tokenizer(BUNDLED, src, vocab)
    f16 = work / f"{K_QUANT_FIXTURE}-f16.gguf"
    convert(llama, src, f16, "f16")
    dst = out / f"{K_QUANT_FIXTURE}-q4_k_m.gguf"
    fallbacks = quantize(llama, f16, dst, "q4_k_m")
    jobs.append(dict(gguf=dst, source="tests/fixtures/qwen3_moe-a (variant)", tokens=ref["tokens"],
                     src_dir=src, src_ref=ref, merges=merges, fallbacks=fallbacks,
                     how="convert_hf_to_gguf.py --outtype f16, then llama-quantize Q4_K_M",
                     note=f"qwen3_moe-a with {K_QUANT_CONFIG} (same spec and seed, by "
                          "tools/make_fixtures.py's functions): rows of whole K-quant super-blocks"))

    # References and checks.
    exe = None if args.no_llama_check else build_llama_check(llama, work)
    manifest = {"_about": (
        "Per GGUF (a split set under its stem): its files, how it was made, tensor types and "
        "shapes in ggml order (ne0 first: the row length; numpy/HF order is the reverse), its "
        "metadata (long arrays as counts), the reference file with the HF config it ran under "
        "(from the GGUF metadata plus llama.cpp's fixed behaviour for the arch), and checks: "
        "weights_vs_source (F32: dequantized tensors bit-identical to the source checkpoint), "
        "vs_source_reference (the source model's own outputs), config_not_carried_by_gguf and "
        "source_config_on_gguf_weights (where the source config says more than a GGUF can), "
        "transformers_gguf (from_pretrained(gguf_file=...) alone, and given the config), "
        "llama_cpp (libllama's own forward: f32 KV cache, no flash attention; its CPU kernels "
        "quantize activations for quantized weights, hence the larger diffs there).")}
    for job in jobs:
        path = job["gguf"]
        stem = job.get("stem", path.stem)
        files = split_paths(path)
        meta, tensors = read_gguf(path)
        cfg = hf_config_from_gguf(meta, tensors)
        hub = hub_tensors(meta, tensors, cfg)
        model = hf_from_hub(cfg, hub, work / "hf")
        tokens = job["tokens"]
        logits, greedy = hf_outputs(model, tokens)
        margins = greedy_margins(model, tokens, greedy)
        ref_file = out / f"{stem}.reference.safetensors"
        save_file({"tokens": tokens.contiguous(), "logits": logits, "greedy": greedy}, ref_file,
                  metadata={"gguf": path.name})  # one key: safetensors writes a map's keys in no fixed order
        checks = {}
        if job.get("exact"):
            checks["weights_vs_source"] = compare_to_source(hub, job["src_dir"])
        if "src_ref" in job:
            sref = job["src_ref"]
            checks["vs_source_reference"] = {
                "max_abs_logit_diff": max_diff(logits, sref["logits"]),
                "greedy_equal": bool(torch.equal(greedy, sref["greedy"]))}
            src_cfg = json.loads((job["src_dir"] / "config.json").read_text())
            src_cfg.pop("quantization_config", None)
            differ = {}
            for k, v in cfg.items():
                sv = src_cfg.get(k, "<absent>")
                if k == "rope_parameters":
                    sv = dict(src_cfg.get("rope_scaling") or {"rope_type": "default"},
                              rope_theta=src_cfg.get("rope_theta"))
                    sv.pop("type", None)
                    if v.get("truncate") and "truncate" in sv and not sv["truncate"]:
                        differ["rope_parameters.truncate"] = {"gguf": True, "source": False}
                    continue
                if k in ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"):
                    continue
                if sv != "<absent>" and sv != v and not (isinstance(v, float) and np.isclose(v, sv)):
                    differ[k] = {"gguf": v, "source": sv}
            for k in ("clip_qkv", "swiglu_limit"):
                if k in src_cfg and k not in cfg and src_cfg[k] is not None:
                    differ[k] = {"gguf": None, "source": src_cfg[k]}
            if differ:
                checks["config_not_carried_by_gguf"] = differ
                # The same weights under the source's config: must give the fixture's reference.
                m2 = hf_from_hub_config_json(src_cfg, hub, work / "hf-src")
                l2, g2 = hf_outputs(m2, tokens)
                checks["source_config_on_gguf_weights"] = {
                    "max_abs_logit_diff": max_diff(l2, sref["logits"]),
                    "greedy_equal": bool(torch.equal(g2, sref["greedy"]))}
        if len(files) == 1:
            status, tm = transformers_gguf(path)
            checks["transformers_gguf"] = status
            if tm is not None:
                tl, tg = hf_outputs(tm, tokens)
                checks["transformers_gguf"] = {"max_abs_logit_diff": max_diff(tl, logits),
                                               "greedy_equal": bool(torch.equal(tg, greedy))}
            from transformers import AutoConfig
            c = dict(cfg)
            status, tm = transformers_gguf(path, AutoConfig.for_model(c.pop("model_type"), **c))
            checks["transformers_gguf_with_this_config"] = status
            if tm is not None:
                tl, tg = hf_outputs(tm, tokens)
                checks["transformers_gguf_with_this_config"] = {
                    "max_abs_logit_diff": max_diff(tl, logits), "greedy_equal": bool(torch.equal(tg, greedy))}
        if exe is not None:
            checks["ggml_dequant"] = ggml_dequant_check(exe, path, tensors, work)
            status, ll, lg = llama_outputs(exe, path, tokens, cfg["vocab_size"], work)
            checks["llama_cpp"] = status if ll is None else {
                "max_abs_logit_diff": max_diff(ll, logits), "greedy_equal": bool(torch.equal(lg, greedy)),
                "greedy": lg.tolist()}
        types = {}
        for name, (ty, shape, _) in tensors.items():
            types.setdefault(ty, []).append(name)
        import gguf
        for p in files + [ref_file]:
            os.chmod(p, 0o644)
        manifest[stem] = {
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p),
                               "tensors": len(gguf.GGUFReader(p).tensors)} for p in files},
            "source": job["source"], "made_by": job["how"],
            **({"note": job["note"]} if job.get("note") else {}),
            **({"prompt": job["prompt"]} if job.get("prompt") else {}),
            **({"tokenizer_merges": job["merges"]} if job.get("merges") else {}),
            **({"llama_quantize_fallbacks": job["fallbacks"]} if job.get("fallbacks") else {}),
            "tensor_types": {k: len(v) for k, v in sorted(types.items())},
            "tensors": {name: f"{ty} {shape}" for name, (ty, shape, _) in tensors.items()},
            "metadata": metadata_summary(meta),
            "reference": {"file": ref_file.name, "method": "gguf-py dequantize -> hub layout -> HF "
                          + type(model).__name__ + " (f32, eager)", "hf_config": cfg,
                          "greedy": greedy.tolist(), "greedy_margins": margins},
            "checks": checks,
        }
        log(f"{stem}: {sum(p.stat().st_size for p in files) / 1e6:.2f} MB, "
            f"{dict(sorted(Counter(t[0] for t in tensors.values()).items()))}, checks {json.dumps(checks)}")

    # Tokenizer cases: tokenizer.json (HF tokenizers) is the truth.
    from transformers import AutoTokenizer
    truth = AutoTokenizer.from_pretrained(BUNDLED)
    first = out / f"{BUNDLED_NAME}-{args.bundled_types[0]}.gguf"
    gg = AutoTokenizer.from_pretrained(out, gguf_file=first.name)
    ll = llama_tokenize(exe, first, TOKENIZER_TEXTS, work) if exe is not None else None
    cases = []
    for i, text in enumerate(TOKENIZER_TEXTS):
        ids = truth.encode(text, add_special_tokens=False)
        assert truth.decode(ids) == text, text
        case = {"text": text, "ids": ids}
        gids = gg.encode(text, add_special_tokens=False)
        case["hf_gguf_tokenizer_agrees"] = gids == ids
        if gids != ids:
            case["hf_gguf_tokenizer_ids"] = gids
        if ll is not None:
            case["llama_cpp_agrees"] = ll[i] == ids
            if ll[i] != ids:
                case["llama_cpp_ids"] = ll[i]
        cases.append(case)
    (out / "tokenizer_cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    log("tokenizer cases: " + ", ".join(f"{c['text'][:12]!r} {c['hf_gguf_tokenizer_agrees']}/"
                                         f"{c.get('llama_cpp_agrees')}" for c in cases))
    manifest["tokenizer_cases"] = {
        "file": "tokenizer_cases.json", "gguf": first.name, "truth": f"models/{BUNDLED_NAME}/tokenizer.json",
        "hf_gguf_tokenizer": type(gg).__name__,
        "hf_gguf_tokenizer_agrees": sum(c["hf_gguf_tokenizer_agrees"] for c in cases),
        "llama_cpp_agrees": sum(c.get("llama_cpp_agrees", False) for c in cases) if ll else None,
        "cases": len(cases)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")

    if not args.keep_work:
        shutil.rmtree(work)
    else:
        log(f"work folder kept: {work}")
    total = sum(p.stat().st_size for p in out.iterdir())
    log(f"\n{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: "
        f"{len(list(out.iterdir()))} files, {total / 1e6:.2f} MB")
    for stem, m in manifest.items():
        if stem == "_about":
            continue
        if stem == "tokenizer_cases":
            log(f"  tokenizer_cases.json: {m['cases']} cases, HF-from-GGUF agrees on "
                f"{m['hf_gguf_tokenizer_agrees']}, llama.cpp on {m['llama_cpp_agrees']}")
            continue
        size = sum(f["bytes"] for f in m["files"].values())
        ll = m["checks"].get("llama_cpp")
        ll = f"llama.cpp diff {ll['max_abs_logit_diff']:.2g} greedy {'=' if ll['greedy_equal'] else '!='}" \
            if isinstance(ll, dict) else f"llama.cpp {ll}"
        log(f"  {stem}: {len(m['files'])} file(s) {size / 1e6:.2f} MB {m['tensor_types']}; {ll}")


if __name__ == "__main__":
    main()
