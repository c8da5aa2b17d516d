#!/usr/bin/env python3
"""Build the tokenizer-parity fixtures: the tokenizers of the families we run, as their hub
repositories publish them (tokenizer.json), and HF's ids for a set of hard strings.

No hub is reachable here, so each tokenizer.json is rebuilt from the vocabulary-only GGUF file
llama.cpp keeps for its tokenizer tests (models/ggml-vocab-*.gguf, which
../shared/bench/anchors.sh unpacks): the vocabulary, merges and special tokens from the GGUF,
the normalizer, pre-tokenizer and decoder as the family's published tokenizer.json has them.
The rebuild is checked against the real thing: llama.cpp's ggml-vocab-*.gguf.out files hold the
ids that the family's own HF tokenizer gave for the strings of the .inp files, and every one
must come out of the rebuilt tokenizer.json through HF's tokenizer. Then HF's ids of those
strings and of our own hard strings (whitespace runs, tabs and newlines, emoji, CJK, combining
marks, numbers, code, special-token text) go to tests/fixtures/tokenizers/<family>/cases.json,
with HF's decoding of those ids.

    pip install -r tools/requirements.txt gguf
    python tools/make_tokenizer_fixtures.py ~/moe-anchors/llama/models   # or the vocab folder
"""

import json
import sys
from pathlib import Path

from gguf import GGUFReader
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizers"

# Qwen2's published pre-tokenizer split (Qwen2-MoE, Qwen3-MoE and Qwen3.5 share it).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Byte-level BPE families: (GGUF vocabulary, normalizer, pre-tokenizer) as the hub's
# tokenizer.json has them.
FAMILIES = {
    # Qwen/Qwen1.5-MoE-A2.7B, Qwen/Qwen3-30B-A3B
    "qwen2": ("qwen2", {"type": "NFC"}, {
        "type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]}),
    # ibm-granite/granite-3.x: StarCoder's byte-level BPE, digits split one by one
    "starcoder": ("starcoder", None, {
        "type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}]}),
}

HARD_STRINGS = [
    "", " ", "  ", "\t", "\n", "\n\n\n", " \t \n \r\n x", "Hello world", " Hello world",
    "Hello  world", "   leading and trailing   ", "tabs\tinside\tthe\ttext",
    "emoji 👋🏽 and family 👨‍👩‍👧 and flag 🇫🇷", "日本語のテキストと中文文本，还有한국어",
    "combining: e\u0301 vs é, ñ vs n\u0303, Å vs A\u030a", "numbers 1234567890 3.14159 -42 1e-7 0x1F",
    "1,000,000 and 12:30 and 2026-11-30", "def f(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", 1 + 2); }", "<|im_start|>user\nHi<|im_end|>",
    "<|endoftext|> in the middle <|endoftext|>", "I'm sure you'll see they've done it",
    "UPPER lower MiXeD", "a" * 40, "a b" * 12 + "\n", "\u00a0non\u2009breaking\u3000spaces",
    "Ğ Ġ ĉ byte-level-looking letters", "   \n\n   \n",
]


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def byte_level_bpe(gguf_path, normalizer, pre_tokenizer):
    """tokenizer.json for a GGUF whose tokenizer.ggml.model is gpt2 (byte-level BPE)."""
    r = GGUFReader(str(gguf_path))
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = field(r, "tokenizer.ggml.merges")
    # GGUF token types: 1 normal, 3 control (special), 4 user-defined (added, not special).
    # llama.cpp pads some vocabularies to a round size with [PAD<id>] tokens the hub's
    # tokenizer does not have: left out.
    pad = [i for i, t in enumerate(tokens) if t == f"[PAD{i}]"]
    tokens = tokens[:pad[0]] if pad else tokens
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": ty == 3}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                           "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


def sentencepiece_bpe(gguf_path):
    """tokenizer.json for a Llama-style SentencePiece BPE GGUF (mistralai/Mixtral-8x7B), as
    transformers' LlamaConverter writes it: merges recovered from the pieces' scores, byte
    fallback, a "▁" prepended and spaces as "▁", <s> added in front by the post-processor."""
    r = GGUFReader(str(gguf_path))
    tokens = field(r, "tokenizer.ggml.tokens")
    scores = field(r, "tokenizer.ggml.scores")
    types = field(r, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    # transformers' SentencePieceExtractor: every split of a piece into two pieces, ordered by
    # the ids of the halves within a piece and by the piece's score overall (stable sorts).
    merges = []
    for piece, score in zip(tokens, scores):
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges = [[a, b] for a, b, _ in sorted(merges, key=lambda m: m[2], reverse=True)]
    # GGUF token types: 2 unknown, 3 control.
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (2, 3)]
    bos = tokens[field(r, "tokenizer.ggml.bos_token_id")]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": tokens[0],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def llama_cpp_cases(vocab_dir, name):
    """llama.cpp's test strings and HF's ids for them ([] where it has none)."""
    inp, out = vocab_dir / f"ggml-vocab-{name}.gguf.inp", vocab_dir / f"ggml-vocab-{name}.gguf.out"
    if not inp.exists():
        return []
    # Each string is followed by a marker line; the .out has one line of ids per string.
    texts = inp.read_text().split("\n__ggml_vocab_test__\n")[:-1]
    ids = out.read_text().split("\n")[:len(texts)]
    assert len(ids) == len(texts), f"{inp}: {len(texts)} strings, {len(ids)} lines of ids"
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]


def main():
    vocab_dir = Path(sys.argv[1])
    if not any(vocab_dir.glob("ggml-vocab-*.gguf")):
        vocab_dir = vocab_dir / "models"
    builders = {family: (vocab, lambda p, n=n, t=t: byte_level_bpe(p, n, t))
                for family, (vocab, n, t) in FAMILIES.items()}
    # mistralai/Mixtral-8x7B-v0.1: Llama's SentencePiece vocabulary of 32000
    builders["llama-spm"] = ("llama-spm", sentencepiece_bpe)
    for family, (vocab, build) in builders.items():
        folder = OUT / family
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer_json = build(vocab_dir / f"ggml-vocab-{vocab}.gguf")
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False,
                                                          separators=(",", ":")))
        tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        checked = 0
        for text, want in llama_cpp_cases(vocab_dir, vocab):
            got = tok(text, add_special_tokens=False)["input_ids"]
            assert got == want, f"{family}: {text!r}: rebuilt {got}, HF's published {want}"
            checked += 1
        texts = [t for t, _ in llama_cpp_cases(vocab_dir, vocab)] + HARD_STRINGS
        cases = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            cases.append({"text": t, "tokens": ids, "decoded": tok.decode(ids)})
        source = f"llama.cpp models/ggml-vocab-{vocab}.gguf (llama-cpp-python 0.3.36 sdist)"
        (folder / "cases.json").write_text(json.dumps(
            {"source": source, "checked_against_published_ids": checked, "cases": cases},
            ensure_ascii=False, indent=1) + "\n")
        print(f"{family}: {len(cases)} cases, {checked} checked against llama.cpp's HF ids")


if __name__ == "__main__":
    main()
