"""Writes a reduced-depth gpt-oss-20b benchmark checkpoint with random weights.

Full gpt-oss-20b width (hidden 2880, 64 query / 8 KV heads of 64, 32 experts of 2880, top-4,
vocabulary 201088) but only --layers decoder layers (default 4: sliding, full, sliding, full).
Tensors, names, dtypes and shapes are exactly those of OpenAI's published checkpoint: experts
in MXFP4 (U8 `_blocks` [E, out, in/32, 16] and U8 e8m0 `_scales` [E, out, in/32], BF16
`_bias`), everything else BF16, config.json with the published `quantization_config`.

The values are random but sized like a trained model's: dense weights N(0, 0.02), norms near 1,
small biases, attention sinks N(0, 0.5), MXFP4 blocks uniformly random bytes (every FP4 code)
with scales 120..122, i.e. 2^-7..2^-5 (never 255, the e8m0 NaN). Each tensor draws from its
own seed (the run seed and the tensor's name), so the output does not depend on the order or
the chunking of generation.

Tensors are streamed to disk chunk by chunk by a small safetensors writer, so memory stays
around a hundred MiB whatever the width. Shards are cut like the hub's (model-0000i-of-0000n
plus model.safetensors.index.json), never splitting a layer across shards: llama.cpp's
converter expects each layer's `_blocks` before its `_scales`, which holds within one shard.

The tokenizer is not gpt-oss's (o200k_harmony is not available offline): tokenizer.json and
tokenizer_config.json are copied from --tokenizer, a small byte-level BPE; llama.cpp's converter
pads its vocabulary with [PAD<i>] tokens up to vocab_size. Token ids are all a benchmark needs.

Then the GGUF, by llama.cpp's own converter (`convert_hf_to_gguf.py DIR --outfile GGUF
--outtype bf16`): its gpt-oss class copies the MXFP4 experts as they are (repacked to ggml's
MXFP4 blocks), everything else goes to BF16 (1-D tensors F32), as in ggml-org's gpt-oss GGUFs.
One patch, applied in memory, no llama.cpp file edited: the converter does not know this
tokenizer's pre-tokenizer hash and refuses it, so an unknown hash is taken as "gpt-2" (the
tokenizer is byte-level BPE with the GPT-2 split regex, which tools/llama_convert.py checks
first).

Usage:
    ~/moe-anchors/venv/bin/python tools/make_bench_checkpoint.py \\
        [--out ~/moe-anchors/gptoss20b-4l] [--gguf ~/moe-anchors/gptoss20b-4l-mxfp4.gguf | --no-gguf] \\
        [--layers 4] [--tokenizer ~/moe-anchors/q3mini] [--llama ~/moe-anchors/llama] \\
        [--seed 0] [--max-shard-gb 2]
"""

import argparse
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from llama_convert import convert

HIDDEN = 2880
INTER = 2880
HEADS = 64
KV_HEADS = 8
HEAD_DIM = 64
EXPERTS = 32
TOP_K = 4
VOCAB = 201088
BLOCK = 32  # MXFP4 values per scale

DENSE_STD = 0.02
BIAS_STD = 0.01
SINK_STD = 0.5
NORM_STD = 0.02  # around 1
SCALES = (120, 122)  # e8m0 exponents, inclusive: 2^-7 .. 2^-5

CHUNK_ELEMS = 1 << 23  # values generated at once (32 MiB of f32)


def config(layers):
    return {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": 200002,
        "experts_per_token": TOP_K,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initial_context_length": 4096,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention"
                        for i in range(layers)],
        "max_position_embeddings": 131072,
        "model_type": "gpt_oss",
        "num_attention_heads": HEADS,
        "num_experts_per_tok": TOP_K,
        "num_hidden_layers": layers,
        "num_key_value_heads": KV_HEADS,
        "num_local_experts": EXPERTS,
        "output_router_logits": False,
        "pad_token_id": 199999,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": 128,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


# A tensor spec: (name, dtype, shape, kind), kind one of
#   ("normal", std, mean)  BF16 N(mean, std)
#   ("bytes",)             U8 uniformly random (MXFP4 blocks)
#   ("scales",)            U8 uniform in SCALES
def layer_specs(i):
    p = f"model.layers.{i}"
    dense = ("normal", DENSE_STD, 0.0)
    bias = ("normal", BIAS_STD, 0.0)
    norm = ("normal", NORM_STD, 1.0)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    specs = [
        (f"{p}.input_layernorm.weight", "BF16", [HIDDEN], norm),
        (f"{p}.post_attention_layernorm.weight", "BF16", [HIDDEN], norm),
        (f"{p}.self_attn.q_proj.weight", "BF16", [q, HIDDEN], dense),
        (f"{p}.self_attn.q_proj.bias", "BF16", [q], bias),
        (f"{p}.self_attn.k_proj.weight", "BF16", [kv, HIDDEN], dense),
        (f"{p}.self_attn.k_proj.bias", "BF16", [kv], bias),
        (f"{p}.self_attn.v_proj.weight", "BF16", [kv, HIDDEN], dense),
        (f"{p}.self_attn.v_proj.bias", "BF16", [kv], bias),
        (f"{p}.self_attn.o_proj.weight", "BF16", [HIDDEN, q], dense),
        (f"{p}.self_attn.o_proj.bias", "BF16", [HIDDEN], bias),
        (f"{p}.self_attn.sinks", "BF16", [HEADS], ("normal", SINK_STD, 0.0)),
        (f"{p}.mlp.router.weight", "BF16", [EXPERTS, HIDDEN], dense),
        (f"{p}.mlp.router.bias", "BF16", [EXPERTS], bias),
    ]
    # gate_up rows interleave gate (even) and up (odd), as published; random either way.
    for proj, out, inp in (("gate_up_proj", 2 * INTER, HIDDEN), ("down_proj", HIDDEN, INTER)):
        e = f"{p}.mlp.experts.{proj}"
        specs += [
            (f"{e}_blocks", "U8", [EXPERTS, out, inp // BLOCK, BLOCK // 2], ("bytes",)),
            (f"{e}_scales", "U8", [EXPERTS, out, inp // BLOCK], ("scales",)),
            (f"{e}_bias", "BF16", [EXPERTS, out], bias),
        ]
    return specs


def groups(layers):
    """Tensor groups in file order; a group never straddles two shards."""
    yield [("model.embed_tokens.weight", "BF16", [VOCAB, HIDDEN], ("normal", DENSE_STD, 0.0))]
    for i in range(layers):
        yield layer_specs(i)
    yield [("model.norm.weight", "BF16", [HIDDEN], ("normal", NORM_STD, 1.0)),
           ("lm_head.weight", "BF16", [VOCAB, HIDDEN], ("normal", DENSE_STD, 0.0))]


ITEMSIZE = {"BF16": 2, "U8": 1}


def nbytes(spec):
    _, dtype, shape, _ = spec
    return int(np.prod(shape)) * ITEMSIZE[dtype]


def to_bf16(x):
    """f32 array -> bf16 bits (uint16), round to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    u = u + (((u >> 16) & 1) + 0x7FFF)
    return (u >> 16).astype(np.uint16)


def chunks(spec, seed):
    """The tensor's bytes, in pieces of at most CHUNK_ELEMS values."""
    name, dtype, shape, kind = spec
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    n = int(np.prod(shape))
    for start in range(0, n, CHUNK_ELEMS):
        m = min(CHUNK_ELEMS, n - start)
        if kind[0] == "normal":
            _, std, mean = kind
            x = rng.standard_normal(m, dtype=np.float32) * np.float32(std) + np.float32(mean)
            yield to_bf16(x).astype("<u2").tobytes()
        elif kind[0] == "bytes":
            yield rng.bytes(m)
        elif kind[0] == "scales":
            yield rng.integers(SCALES[0], SCALES[1] + 1, m, dtype=np.uint8).tobytes()
        else:
            raise ValueError(kind)


def write_safetensors(path, specs, seed):
    """Streams the tensors to one safetensors file, data in the order of `specs`."""
    header, offset = {}, 0
    for spec in specs:
        name, dtype, shape, _ = spec
        size = nbytes(spec)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            written = 0
            for piece in chunks(spec, seed):
                f.write(piece)
                written += len(piece)
            assert written == nbytes(spec), spec[0]
    return offset


def check(out_dir, expected):
    """Reads the shards back through safetensors: every tensor with its dtype and shape, and
    a spot check of the scales."""
    from safetensors import safe_open
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    seen = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(out_dir / shard, "np") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                seen[k] = (sl.get_dtype(), sl.get_shape())
                assert index["weight_map"][k] == shard, k
                if k.endswith("_scales"):
                    s = sl[0]
                    assert s.min() >= SCALES[0] and s.max() <= SCALES[1], k
    want = {name: (dtype, shape) for name, dtype, shape, _ in expected}
    assert seen == want, sorted(set(seen.items()) ^ set(want.items()))


def convert_to_gguf(out_dir, gguf, llama):
    convert(llama, out_dir, gguf, "bf16")
    print(f"{gguf}: {gguf.stat().st_size / 2**30:.2f} GiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path.home() / "moe-anchors" / "gptoss20b-4l")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokenizer", type=Path, default=Path.home() / "moe-anchors" / "q3mini",
                    help="directory holding tokenizer.json and tokenizer_config.json")
    ap.add_argument("--gguf", type=Path, default=Path.home() / "moe-anchors" / "gptoss20b-4l-mxfp4.gguf")
    ap.add_argument("--no-gguf", action="store_true", help="write the safetensors checkpoint only")
    ap.add_argument("--llama", type=Path, default=Path.home() / "moe-anchors" / "llama",
                    help="llama.cpp source tree (convert_hf_to_gguf.py, conversion/, gguf-py/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-gb", type=float, default=2.0,
                    help="shard size limit in GB (10^9 bytes); a layer is never split")
    args = ap.parse_args()

    # Cut the shards first: file names carry the count.
    limit = int(args.max_shard_gb * 1e9)
    shards, cur, cur_size = [], [], 0
    for g in groups(args.layers):
        size = sum(nbytes(s) for s in g)
        if cur and cur_size + size > limit:
            shards.append(cur)
            cur, cur_size = [], 0
        cur += g
        cur_size += size
    shards.append(cur)

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    n = len(shards)
    weight_map, total = {}, 0
    for i, specs in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        size = write_safetensors(out / fname, specs, args.seed)
        total += size
        weight_map.update({s[0]: fname for s in specs})
        print(f"{fname}: {len(specs)} tensors, {size / 2**30:.2f} GiB", flush=True)
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config(args.layers), indent=2, sort_keys=True) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.tokenizer / f, out / f)

    check(out, [s for specs in shards for s in specs])
    print(f"{out}: {args.layers} layers, {total / 2**30:.2f} GiB of tensors, checked", flush=True)
    if not args.no_gguf:
        convert_to_gguf(out, args.gguf, args.llama)


if __name__ == "__main__":
    main()
