//! Text to ids and back: a checkpoint's tokenizer.json (through the `tokenizers` crate) with the
//! special tokens and chat template of tokenizer_config.json, and streaming detokenization.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{
    DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper,
};

use crate::chat_template::{special_token_text, ChatTemplate, Message, RenderOptions};
use crate::error::{Error, Result};

/// A checkpoint's tokenizer, its end-of-sequence ids and its chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// End-of-sequence ids named by tokenizer_config.json (generation_config.json may add more).
    eos: Vec<u32>,
    chat_template: Option<ChatTemplate>,
}

/// A conversation rendered by the chat template, and its ids.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPrompt {
    pub text: String,
    pub tokens: Vec<u32>,
}

impl Tokenizer {
    /// Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` and
    /// `dir/chat_template.jinja`.
    /// A GGUF model (a GGUF file, or a folder holding one and no tokenizer.json) reads the
    /// tokenizer its metadata holds.
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        if crate::gguf::holds_gguf(dir) && !dir.join("tokenizer.json").exists() {
            return Tokenizer::from_gguf(&crate::gguf::Gguf::open(dir)?);
        }
        let path = dir.join("tokenizer.json");
        let inner = read_tokenizer_json(&path)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            crate::json::read(&config_path)?
        } else {
            Value::Null
        };
        Tokenizer::from_parts(inner, path, dir, config)
    }

    /// The tokenizer of a GGUF file (see [`crate::gguf::tokenizer_files`]).
    pub fn from_gguf(file: &crate::gguf::Gguf) -> Result<Tokenizer> {
        let (json, config) = crate::gguf::tokenizer_files(file)?;
        let path = file.path().to_path_buf();
        let inner = json
            .to_string()
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
        // `path` is a file: no chat_template.jinja is found beside it by mistake.
        Tokenizer::from_parts(inner, path.clone(), &path, config)
    }

    /// A tokenizer from its parts: `config` as tokenizer_config.json holds it, `dir` where a
    /// chat_template.jinja would be.
    fn from_parts(
        inner: tokenizers::Tokenizer,
        path: PathBuf,
        dir: &Path,
        config: Value,
    ) -> Result<Tokenizer> {
        let config_path = dir.join("tokenizer_config.json");
        let special = |key: &str| -> Result<Option<u32>> {
            match special_token_text(&config, key) {
                None => Ok(None),
                Some(text) => inner.token_to_id(&text).map(Some).ok_or_else(|| {
                    Error::config(
                        &config_path,
                        key,
                        format!("`{text}` is not in the vocabulary"),
                    )
                }),
            }
        };
        // bos comes from tokenizer.json's post-processor, as in HF; `bos_token` must still be
        // in the vocabulary, since templates write it.
        special("bos_token")?;
        let eos = special("eos_token")?.into_iter().collect();
        let chat_template = ChatTemplate::load(dir, &config)?;
        Ok(Tokenizer {
            inner,
            path,
            eos,
            chat_template,
        })
    }

    /// The ids of `text` as HF's `tokenizer(text)` gives them: tokenizer.json's post-processor
    /// adds what the checkpoint wants (a bos token for Llama-style ones), and special tokens
    /// written in the text become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// The ids of `text`, with what tokenizer.json's post-processor adds only when
    /// `add_special_tokens` (HF's `tokenizer(text, add_special_tokens=...)`); special tokens
    /// written in the text become their ids either way.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.ids(&self.inner, text, add_special_tokens)
    }

    /// The ids `tokenizer` (this one's, or a copy set otherwise) gives `text`.
    fn ids(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>> {
        let encoding = tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// `messages` through the chat template, and the ids of the text, as HF's
    /// `apply_chat_template`: the template writes every special token itself, so none is added.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        opts: &RenderOptions,
    ) -> Result<ChatPrompt> {
        let template = self.chat_template.as_ref().ok_or_else(|| Error::Template {
            path: self.path.with_file_name("tokenizer_config.json"),
            message: "the checkpoint has no chat template (no `chat_template` here and no \
                      chat_template.jinja beside it)"
                .into(),
        })?;
        let text = template.render(messages, opts)?;
        let tokens = self.encode_with(&text, false)?;
        Ok(ChatPrompt { text, tokens })
    }

    /// The ids of `text` with special-token text (`<|im_start|>`) read as plain text: each
    /// character through the model's normal vocabulary, as HF's `split_special_tokens=True`.
    /// `add_special_tokens` as for [`Tokenizer::encode_with`]. Works on a copy of the
    /// tokenizer (the switch is the tokenizer's state): for one text at a time.
    pub fn encode_literally(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut literal = self.inner.clone();
        literal.set_encode_special_tokens(true);
        self.ids(&literal, text, add_special_tokens)
    }

    /// The text of `ids`, special tokens included. An id the vocabulary does not hold is an
    /// error (the tokenizers crate would skip it silently).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {} ({} ids)",
                self.path.display(),
                self.vocab_size()
            )));
        }
        self.inner.decode(ids, false).map_err(|e| self.error(e))
    }

    /// Ids in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The vocabulary's text for `id` (a byte-level piece, `Ġthe`, as the vocabulary holds it).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
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

/// The model types tokenizer.json's `model.type` may name.
const MODEL_TYPES: [&str; 4] = ["BPE", "WordPiece", "WordLevel", "Unigram"];

/// Reads the tokenizer.json at `path` (a regular file within `Limits::max_json_bytes`). When
/// the `tokenizers` crate refuses it, the error says what is wrong where it can: a JSON syntax
/// error with its line and column, a missing or unknown `model.type`, rather than the crate's
/// "did not match any variant of untagged enum ModelUntagged".
fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = crate::json::read_text(path)?;
    let error = match text.parse::<tokenizers::Tokenizer>() {
        Ok(tokenizer) => return Ok(tokenizer),
        Err(e) => crate::error::clipped(&e.to_string()),
    };
    // Only a file refused is parsed again, to say why.
    let value = crate::json::parse(path, &text)?;
    let bad = |message: String| Error::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let Some(model) = value.get("model") else {
        return Err(bad(
            "field `model` is missing (the vocabulary and how it splits text)".into(),
        ));
    };
    if !model.is_object() {
        return Err(bad(format!(
            "field `model`: expected an object, got {}",
            kind(model)
        )));
    }
    match model.get("type") {
        Some(Value::String(t)) if MODEL_TYPES.contains(&t.as_str()) => {}
        Some(t) => {
            return Err(bad(format!(
                "field `model.type`: {} is not a tokenizer model (expected one of {})",
                crate::error::shortened(&t.to_string()),
                MODEL_TYPES.join(", ")
            )))
        }
        None if error.contains("untagged enum ModelUntagged") => {
            return Err(bad(format!(
                "field `model` has no `type` and does not read as any of {}",
                MODEL_TYPES.join(", ")
            )))
        }
        None => {}
    }
    Err(bad(error))
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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
