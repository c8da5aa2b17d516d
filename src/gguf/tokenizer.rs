//! A GGUF file's tokenizer as HF's tokenizer.json would hold it: `tokenizer.ggml.model` gpt2
//! (byte-level BPE: tokens, merges, and the pre-tokenizer `tokenizer.ggml.pre` names), control
//! and user-defined tokens as added tokens, and tokenizer_config.json's special tokens and
//! chat template. The regexes are those of the models' own tokenizer.json files, which
//! llama.cpp's `llama-vocab.cpp` names by the same `pre` values.

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
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// (tokenizer.json, tokenizer_config.json) of `gguf`'s tokenizer.
pub fn tokenizer_files(gguf: &Gguf) -> Result<(Json, Json)> {
    let model = gguf.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(gguf.error(format!(
            "tokenizer.ggml.model `{model}` is not read yet (gpt2, byte-level BPE, is)"
        )));
    }
    let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
    let merges = strings(gguf, "tokenizer.ggml.merges")?;
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
    let pre = gguf
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let (pre_tokenizer, normalizer, ignore_merges) = pre_tokenizer(gguf, pre)?;

    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect();
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == CONTROL || t == USER_DEFINED)
        .map(|(id, (content, &t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t == CONTROL})
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
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges},
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

fn strings<'a>(gguf: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    let value = gguf
        .get(key)
        .ok_or_else(|| gguf.error(format!("metadata `{key}` is missing")))?;
    value
        .as_array()
        .and_then(|items| items.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .ok_or_else(|| gguf.error(format!("metadata `{key}` is not a list of strings")))
}
