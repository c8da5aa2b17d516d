//! A GGUF file's tokenizer as HF's tokenizer.json would hold it: `tokenizer.ggml.model` gpt2
//! (byte-level BPE: tokens, merges, and the pre-tokenizer `tokenizer.ggml.pre` names) or llama
//! (SentencePiece BPE: tokens and scores, as Mixtral's files hold it), control and user-defined
//! tokens as added tokens, and tokenizer_config.json's special tokens and chat template. The
//! regexes are those of the models' own tokenizer.json files, which llama.cpp's
//! `llama-vocab.cpp` names by the same `pre` values.

use serde_json::{json, Value as Json};

use super::{Gguf, Value};
use crate::error::Result;

/// GPT-2's split, built into the ByteLevel pre-tokenizer.
const GPT2: &[&str] = &[
    "gpt-2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
];

/// (pre names, regex of their tokenizer.json's Split, NFC first).
const SPLITS: &[(&[&str], &str, bool)] = &[
    (
        &["llama-bpe", "llama3", "smaug-bpe", "dbrx"],
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
    (
        &["qwen2", "stablelm2", "hunyuan", "solar-open"],
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        true,
    ),
    (
        &["qwen35"],
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        // Qwen3.5 keeps combining marks as they come (its regex groups them with letters).
        false,
    ),
];

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// (tokenizer.json, tokenizer_config.json) of `gguf`'s tokenizer.
pub fn tokenizer_files(gguf: &Gguf) -> Result<(Json, Json)> {
    let model = gguf.str("tokenizer.ggml.model")?;
    if model != "gpt2" && model != "llama" {
        return Err(gguf.error(format!(
            "tokenizer.ggml.model `{model}` is not read yet (gpt2, byte-level BPE, and llama, \
             SentencePiece, are)"
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
    let (model_json, pre_tokenizer, normalizer, decoder) = if model == "llama" {
        sentencepiece(gguf, &tokens, &types)?
    } else {
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let (pre_tokenizer, normalizer, ignore_merges) = pre_tokenizer(gguf, pre)?;
        let merges = strings(gguf, "tokenizer.ggml.merges")?;
        let vocab: serde_json::Map<String, Json> = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), json!(id)))
            .collect();
        let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
                           "continuing_subword_prefix": null, "end_of_word_suffix": null,
                           "fuse_unk": false, "byte_fallback": false,
                           "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges});
        let decoder = json!({"type": "ByteLevel", "add_prefix_space": true,
                             "trim_offsets": true, "use_regex": true});
        (model, pre_tokenizer, normalizer, decoder)
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
    let add_bos = gguf
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

/// The pre-tokenizer, normalizer and `ignore_merges` of the tokenizer.json `pre` stands for.
fn pre_tokenizer(gguf: &Gguf, pre: &str) -> Result<(Json, Json, bool)> {
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    if GPT2.contains(&pre) {
        return Ok((byte_level(true), Json::Null, false));
    }
    let Some(&(names, regex, nfc)) = SPLITS.iter().find(|(names, _, _)| names.contains(&pre))
    else {
        let known: Vec<&str> = GPT2
            .iter()
            .chain(SPLITS.iter().flat_map(|s| s.0.iter()))
            .copied()
            .collect();
        return Err(gguf.error(format!(
            "tokenizer.ggml.pre `{pre}` is not read yet (known: {})",
            known.join(", ")
        )));
    };
    let split = json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                       "invert": false});
    let pre_tokenizer = json!({"type": "Sequence",
                               "pretokenizers": [split, byte_level(false)]});
    let normalizer = if nfc {
        json!({"type": "NFC"})
    } else {
        Json::Null
    };
    // Llama 3's tokenizer takes a word the vocabulary holds whole before any merge.
    Ok((pre_tokenizer, normalizer, names.contains(&"llama-bpe")))
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
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = match space_prefix {
        true => json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"}, replace]}),
        false => replace,
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let decoder = json!({"type": "Sequence", "decoders": decoders});
    Ok((model, Json::Null, normalizer, decoder))
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
