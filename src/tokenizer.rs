//! Text to ids and back: a checkpoint's tokenizer.json (through the `tokenizers` crate) with the
//! bos/eos settings of tokenizer_config.json, and streaming detokenization.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{
    DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper,
};

use crate::error::{Error, Result};

/// A checkpoint's tokenizer and its special-token settings.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Prepended to prompts when tokenizer_config.json says `add_bos_token`.
    bos: Option<u32>,
    /// End-of-sequence ids named by tokenizer_config.json (generation_config.json may add more).
    eos: Vec<u32>,
}

impl Tokenizer {
    /// Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            crate::json::read(&config_path)?
        } else {
            Value::Null
        };
        let mut tok = Tokenizer {
            inner,
            path,
            bos: None,
            eos: Vec::new(),
        };
        let special = |key: &str| -> Result<Option<u32>> {
            match special_token_text(&config, key) {
                None => Ok(None),
                Some(text) => tok.inner.token_to_id(&text).map(Some).ok_or_else(|| {
                    Error::config(
                        &config_path,
                        key,
                        format!("`{text}` is not in the vocabulary"),
                    )
                }),
            }
        };
        let bos = special("bos_token")?;
        let eos = special("eos_token")?;
        let add_bos = config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        tok.bos = bos.filter(|_| add_bos);
        tok.eos = eos.into_iter().collect();
        Ok(tok)
    }

    /// The ids of `text`, with the bos token first when the checkpoint asks for one. Special
    /// tokens written in the text (as chat templates do) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        Ok(self
            .bos
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .collect())
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| self.error(e))
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Detokenizes ids one at a time for streaming; see [`TextStream`].
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(false),
            tokenizer: self,
        }
    }

    fn error(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// `bos_token` / `eos_token` of tokenizer_config.json: a string, or an AddedToken object.
fn special_token_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// Streaming detokenization: each piece is valid UTF-8 (a character split across tokens waits
/// for its last byte), and the pieces concatenate to the decoding of all ids at once.
pub struct TextStream<'a> {
    inner: DecodeStream<
        'a,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
    tokenizer: &'a Tokenizer,
}

impl TextStream<'_> {
    /// The text that `id` completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.inner.step(id).map_err(|e| self.tokenizer.error(e))
    }
}
