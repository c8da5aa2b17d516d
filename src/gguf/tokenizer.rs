//! A GGUF file's tokenizer as HF's tokenizer.json would hold it: `tokenizer.ggml.model` gpt2
//! (byte-level BPE: tokens, merges, and the pre-tokenizer `tokenizer.ggml.pre` names), llama
//! (SentencePiece BPE: tokens and scores, as Mixtral's files hold it) or gemma4 (BPE with
//! merges on SentencePiece's pieces); control and user-defined tokens as added tokens, and
//! tokenizer_config.json's special tokens and chat template. Each `pre` is rebuilt as the
//! models' own tokenizer.json chains its pre-tokenizers (`PRES`), under the names llama.cpp's
//! `llama-vocab.cpp` reads alike: llama.cpp applies one list of regexes, which tokenizer.json
//! spells as Split, Digits and Punctuation steps, and its vocabulary tests (from HF's
//! tokenizers) are what tests/gguf_tokenizer.rs checks.

use serde_json::{json, Value as Json};

use super::{Gguf, Value};
use crate::error::Result;

/// One pre-tokenizer of a tokenizer.json `Sequence`, as the models' own files chain them.
#[derive(Clone, Copy)]
enum Step {
    /// `Split` on a regex (the `tokenizers` crate's syntax), each match a piece of its own.
    Split(&'static str),
    /// `Digits`: runs of digits split off, each digit on its own when `true`.
    Digits(bool),
    /// `Punctuation`: runs of punctuation (Unicode's, and ASCII's symbols too) split off.
    Punctuation,
    /// `ByteLevel`: the text into GPT-2's byte alphabet, split by GPT-2's regex first when `true`.
    ByteLevel(bool),
}

use Step::{ByteLevel, Digits, Punctuation, Split};

/// The `tokenizer.ggml.pre` values llama.cpp reads alike (one regex list, the same flags), the
/// pre-tokenizer of their tokenizer.json files, whether those normalize to NFC first, and
/// llama.cpp's `ignore_merges` (a word the vocabulary holds whole is taken before any merge).
struct Pre {
    names: &'static [&'static str],
    steps: &'static [Step],
    nfc: bool,
    ignore_merges: bool,
}

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek's letters: the cased scripts (Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee
/// and their kin; CJK is a split of its own). Six characters are escaped: as literals, text
/// normalized to NFC (an editor, a copy) would turn them into others and break their ranges.
const DEEPSEEK_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";

/// CJK ideographs, and the blocks from Samaritan up to them, and Hangul, as DeepSeek splits them.
const DEEPSEEK_CJK: &str = r"[一-龥ࠀ-一가-퟿]+";

const PRES: &[Pre] = &[
    Pre {
        // GPT-2's split, built into the ByteLevel pre-tokenizer. (jina-v1-en, jina-v2-code
        // and roberta-bpe split alike but frame text with CLS/SEP, which is not read here.)
        names: &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "exaone4",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
        ],
        steps: &[ByteLevel(true)],
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        // Llama 3's: up to three digits a piece; a word the vocabulary holds is taken whole.
        names: &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        steps: &[Split(LLAMA3), ByteLevel(false)],
        nfc: false,
        ignore_merges: true,
    },
    Pre {
        // Llama 3's split, but merged as any BPE (llama.cpp skips merges for Llama 3's only).
        names: &["dbrx", "smaug-bpe"],
        steps: &[Split(LLAMA3), ByteLevel(false)],
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        // Qwen2's: one digit a piece, the text normalized to NFC first.
        names: &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
        ],
        steps: &[Split(QWEN2), ByteLevel(false)],
        nfc: true,
        ignore_merges: false,
    },
    Pre {
        // Split as Qwen2 in llama.cpp, with no NFC known in its own files: none, as llama.cpp.
        names: &["grok-2"],
        steps: &[Split(QWEN2), ByteLevel(false)],
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        names: &["qwen35"],
        steps: &[
            Split(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ),
            ByteLevel(false),
        ],
        // Qwen3.5 keeps combining marks as they come (its regex groups them with letters).
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        // DeepSeek LLM's: newlines, cased letters, ASCII and CJK punctuation, trailing
        // whitespace, CJK and digit runs each split off in turn (its vocabulary has no
        // multi-digit token).
        names: &["deepseek-llm"],
        steps: &[
            Split(r"[\r\n]"),
            Split(DEEPSEEK_LETTERS),
            Split(r"\s?[!-/:-~！-／：-～‘-‟　-。]+"),
            Split(r"\s+$"),
            Split(DEEPSEEK_CJK),
            Split(r"\p{N}+"),
            ByteLevel(false),
        ],
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        // DeepSeek Coder's: as DeepSeek LLM's, with Unicode's letters and punctuation, each
        // digit on its own.
        names: &["deepseek-coder"],
        steps: &[
            Split(r"[\r\n]"),
            Split(r"\s?\p{L}+"),
            Split(r"\s?\p{P}+"),
            Split(DEEPSEEK_CJK),
            Digits(true),
            ByteLevel(false),
        ],
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        // Falcon's: punctuation runs, then GPT-2's split, then digit runs cut in threes from
        // the left. The digit steps come after ByteLevel, in GPT-2's byte alphabet, as in its
        // tokenizer.json (llama.cpp's regexes approximate this order).
        names: &["falcon"],
        steps: &[
            Punctuation,
            ByteLevel(true),
            Digits(false),
            Split("[0-9][0-9][0-9]"),
        ],
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        // StarCoder's: GPT-2's, each digit on its own.
        names: &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        steps: &[Digits(true), ByteLevel(true)],
        nfc: false,
        ignore_merges: false,
    },
    Pre {
        // OpenAI's o200k (GPT-4o, gpt-oss): a word is an optional capitalized run then lower
        // case, with its contraction; up to three digits a piece.
        names: &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        steps: &[
            Split(
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ),
            ByteLevel(false),
        ],
        nfc: false,
        ignore_merges: false,
    },
];

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// (tokenizer.json, tokenizer_config.json) of `gguf`'s tokenizer.
pub fn tokenizer_files(gguf: &Gguf) -> Result<(Json, Json)> {
    let model = gguf.str("tokenizer.ggml.model")?;
    if !["gpt2", "llama", "gemma4"].contains(&model) {
        return Err(gguf.error(format!(
            "tokenizer.ggml.model `{model}` is not read yet (gpt2, byte-level BPE; llama, \
             SentencePiece; gemma4, BPE on SentencePiece's pieces are)"
        )));
    }
    let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
    let types: Vec<u64> = match gguf.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect())
            .ok_or_else(|| gguf.error("metadata `tokenizer.ggml.token_type` is not a list"))?,
    };
    if types.len() != tokens.len() {
        return Err(gguf.error(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let (model_json, pre_tokenizer, normalizer, decoder) = match model {
        "llama" => sentencepiece(gguf, &tokens, &types)?,
        "gemma4" => gemma4(gguf, &tokens)?,
        _ => byte_level(gguf, &tokens)?,
    };

    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == CONTROL || t == USER_DEFINED || t == UNKNOWN)
        .map(|(id, (content, &t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t != USER_DEFINED})
        })
        .collect();
    let token = |key: &str| -> Result<Option<&str>> {
        match gguf.u64(key)? {
            None => Ok(None),
            Some(id) => tokens
                .get(id as usize)
                .map(|t| Some(*t))
                .ok_or_else(|| gguf.error(format!("metadata `{key}` = {id} is not a token id"))),
        }
    };
    let bos = token("tokenizer.ggml.bos_token_id")?;
    // llama.cpp always puts BOS before Gemma 4's text, whatever the file says.
    let add_bos = model == "gemma4"
        || gguf
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let post_processor = match (add_bos, bos) {
        (true, Some(bos)) => {
            let id = gguf.u64("tokenizer.ggml.bos_token_id")?.unwrap_or(0);
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                            {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": bos, "type_id": 1}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}}})
        }
        _ => Json::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model_json,
    });
    let mut config = json!({});
    for (field, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        if let Some(text) = token(key)? {
            config[field] = json!(text);
        }
    }
    if let Some(template) = gguf.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = json!(template);
    }
    Ok((tokenizer, config))
}

/// Byte-level BPE (`tokenizer.ggml.model` gpt2): the pieces in GPT-2's byte alphabet, split
/// before merging as the tokenizer.json `tokenizer.ggml.pre` names does. (model,
/// pre-tokenizer, normalizer, decoder).
fn byte_level(gguf: &Gguf, tokens: &[&str]) -> Result<(Json, Json, Json, Json)> {
    let pre = match gguf.get("tokenizer.ggml.pre") {
        // llama.cpp's name for a file without one; not read here (no tokenizer.json has it).
        None => "default",
        Some(v) => v.as_str().ok_or_else(|| {
            gguf.error(format!(
                "metadata `tokenizer.ggml.pre` is {} {v}, expected a string",
                v.type_name()
            ))
        })?,
    };
    let Some(row) = PRES.iter().find(|row| row.names.contains(&pre)) else {
        let known: Vec<&str> = PRES.iter().flat_map(|row| row.names).copied().collect();
        return Err(gguf.error(format!(
            "tokenizer.ggml.pre `{pre}` is not read yet (known: {})",
            known.join(", ")
        )));
    };
    let steps: Vec<Json> = row.steps.iter().map(step).collect();
    let pre_tokenizer = match &steps[..] {
        [one] => one.clone(),
        _ => json!({"type": "Sequence", "pretokenizers": steps}),
    };
    let normalizer = match row.nfc {
        true => json!({"type": "NFC"}),
        false => Json::Null,
    };
    let model = bpe(gguf, tokens, row.ignore_merges)?;
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true,
                         "trim_offsets": true, "use_regex": true});
    Ok((model, pre_tokenizer, normalizer, decoder))
}

/// `step` as tokenizer.json writes it.
fn step(step: &Step) -> Json {
    match *step {
        Split(regex) => json!({"type": "Split", "pattern": {"Regex": regex},
                               "behavior": "Isolated", "invert": false}),
        Digits(individual) => json!({"type": "Digits", "individual_digits": individual}),
        Punctuation => json!({"type": "Punctuation", "behavior": "Contiguous"}),
        ByteLevel(use_regex) => json!({"type": "ByteLevel", "add_prefix_space": false,
                                       "trim_offsets": true, "use_regex": use_regex}),
    }
}

/// Gemma 4's BPE (`tokenizer.ggml.model` gemma4): ranked merges as gpt2 has, but on
/// SentencePiece's pieces, raw UTF-8 with "▁" for a space (no space put in front) and bytes
/// through `<0xXX>` tokens. llama.cpp merges within runs of newlines and runs of anything
/// else (the Split). It also takes a run of newlines the vocabulary holds whole before
/// merging; Gemma 4's merges reach the same token for each (1 to 31 newlines), so plain BPE
/// serves. (model, pre-tokenizer, normalizer, decoder).
fn gemma4(gguf: &Gguf, tokens: &[&str]) -> Result<(Json, Json, Json, Json)> {
    let unk = gguf
        .u64("tokenizer.ggml.unknown_token_id")?
        .and_then(|id| tokens.get(id as usize).copied());
    let mut model = bpe(gguf, tokens, false)?;
    model["unk_token"] = json!(unk);
    model["fuse_unk"] = json!(true);
    model["byte_fallback"] = json!(true);
    let pre_tokenizer = json!({"type": "Split", "pattern": {"Regex": "[^\n]+|[\n]+"},
                               "behavior": "Isolated", "invert": false});
    Ok((
        model,
        pre_tokenizer,
        spm_normalizer(false),
        spm_decoder(false),
    ))
}

/// The BPE model of `tokens` and `tokenizer.ggml.merges`.
fn bpe(gguf: &Gguf, tokens: &[&str], ignore_merges: bool) -> Result<Json> {
    let merges = strings(gguf, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(rank, merge)| {
            // As llama.cpp reads them: the first space after the first character parts the
            // two, so a left token may begin with a space.
            let at = merge.char_indices().skip(1).find(|&(_, c)| c == ' ');
            at.map(|(at, _)| json!([&merge[..at], &merge[at + 1..]]))
                .ok_or_else(|| {
                    gguf.error(format!(
                        "metadata `tokenizer.ggml.merges` entry {rank} `{merge}` is not two \
                         tokens parted by a space"
                    ))
                })
        })
        .collect::<Result<Vec<Json>>>()?;
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect();
    Ok(json!({"type": "BPE", "dropout": null, "unk_token": null,
              "continuing_subword_prefix": null, "end_of_word_suffix": null,
              "fuse_unk": false, "byte_fallback": false,
              "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}))
}

/// SentencePiece's "▁" for a space, one put in front of the text when `prefix`.
fn spm_normalizer(prefix: bool) -> Json {
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    match prefix {
        true => json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"}, replace]}),
        false => replace,
    }
}

/// Text back from SentencePiece's pieces: spaces, bytes, and the space put in front dropped
/// when `prefix`.
fn spm_decoder(prefix: bool) -> Json {
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({"type": "Sequence", "decoders": decoders})
}

/// SentencePiece's BPE as HF's converter writes it for Llama-style tokenizers: merges made
/// from the vocabulary, each split of a piece into two pieces ranked by the score of the whole
/// (HF's `SentencePieceExtractor`: per piece by the ids of the halves, then by score, stably);
/// bytes through `<0xXX>` tokens; "▁" for spaces, one put in front of the text when
/// `tokenizer.ggml.add_space_prefix` says so (the default). (model, pre-tokenizer, normalizer,
/// decoder).
fn sentencepiece(gguf: &Gguf, tokens: &[&str], types: &[u64]) -> Result<(Json, Json, Json, Json)> {
    let scores: Vec<f64> = gguf
        .get("tokenizer.ggml.scores")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
        .filter(|s: &Vec<f64>| s.len() == tokens.len())
        .ok_or_else(|| {
            gguf.error("metadata `tokenizer.ggml.scores` is not one number per token")
        })?;
    let ids: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(id, t)| (*t, id)).collect();
    let mut merges: Vec<(f64, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != NORMAL && types[id] != USER_DEFINED {
            continue;
        }
        let mut local: Vec<(usize, usize, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, l, r))
            })
            .collect();
        local.sort();
        merges.extend(local.into_iter().map(|(_, _, l, r)| (scores[id], l, r)));
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let merges: Vec<String> = merges.iter().map(|(_, l, r)| format!("{l} {r}")).collect();
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect();
    let unk = gguf
        .u64("tokenizer.ggml.unknown_token_id")?
        .and_then(|id| tokens.get(id as usize))
        .map(|t| json!(t))
        .unwrap_or(Json::Null);
    let model = json!({"type": "BPE", "dropout": null, "unk_token": unk,
                       "continuing_subword_prefix": null, "end_of_word_suffix": null,
                       "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                       "vocab": vocab, "merges": merges});
    let space_prefix = gguf
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    Ok((
        model,
        Json::Null,
        spm_normalizer(space_prefix),
        spm_decoder(space_prefix),
    ))
}

fn strings<'a>(gguf: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    let value = gguf
        .get(key)
        .ok_or_else(|| gguf.error(format!("metadata `{key}` is missing")))?;
    value
        .as_array()
        .and_then(|items| items.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .ok_or_else(|| gguf.error(format!("metadata `{key}` is not a list of strings")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::split::{Split as SplitPre, SplitPattern};
    use tokenizers::{
        OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
    };

    fn splitter(regex: &str) -> tokenizers::Result<SplitPre> {
        let pattern = SplitPattern::Regex(regex.to_string());
        SplitPre::new(pattern, SplitDelimiterBehavior::Isolated, false)
    }

    #[test]
    fn every_split_regex_compiles() {
        for row in PRES {
            for step in row.steps {
                if let Split(regex) = step {
                    splitter(regex).unwrap_or_else(|e| panic!("{:?} {regex}: {e}", row.names));
                }
            }
        }
    }

    /// GPT-4o's split has no vocabulary in llama.cpp's suite: its pieces here are those of
    /// tiktoken's o200k regex (run by Python's `regex`).
    #[test]
    fn gpt_4o_splits_as_o200k() {
        let row = PRES.iter().find(|r| r.names.contains(&"gpt-4o")).unwrap();
        let Split(regex) = row.steps[0] else {
            panic!("gpt-4o begins with its Split")
        };
        let pieces = |text: &str| -> Vec<String> {
            let mut s = PreTokenizedString::from(text);
            splitter(regex).unwrap().pre_tokenize(&mut s).unwrap();
            s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(piece, _, _)| piece.to_string())
                .collect()
        };
        assert_eq!(
            pieces("Hello World's HTTPServer 1234567 don't\n\n  x"),
            [
                "Hello",
                " World's",
                " HTTPServer",
                " ",
                "123",
                "456",
                "7",
                " don't",
                "\n\n",
                " ",
                " x"
            ]
        );
        assert_eq!(
            pieces("WE'LL go/ 42€ ÉCOLE école"),
            ["WE'LL", " go", "/", " ", "42", "€", " ÉCOLE", " école"]
        );
    }
}
