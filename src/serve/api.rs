//! OpenAI's requests read into jobs for the scheduler: the chat template applied as `moe chat`
//! applies it, sampling fields over the checkpoint's defaults, the token budget checked
//! against the context, and every field the engine cannot honour refused by name (an ignored
//! `logprobs` or `n` would hand the client an answer to another question).

use axum::http::StatusCode;
use openai_protocol::chat::{ChatCompletionRequest, ChatMessage, MessageContent};
use openai_protocol::common::{ContentPart, StringOrArray, ToolChoice, ToolChoiceValue};
use openai_protocol::completion::CompletionRequest;
use serde_json::{Map, Value};
use validator::Validate;

use super::ServeState;
use crate::chat_template::{Message, RenderOptions};
use crate::sampling::SamplingConfig;

/// The longest stop string, in bytes.
const MAX_STOP_BYTES: usize = 1024;
/// The most stop ids a request may add.
const MAX_STOP_IDS: usize = 1024;

/// An error as OpenAI's API answers it: a status, and `{"error": {message, type, param}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    /// A 400 naming the request field at fault.
    pub fn field(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// OpenAI's `type` for the status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => "server_busy",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

/// A request made ready for the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    pub stop_strings: Vec<String>,
    pub stop_tokens: Vec<u32>,
    /// Generate past the model's end-of-sequence ids (benchmarks of a fixed length).
    pub ignore_eos: bool,
    /// A text completion: the continuation as raw text.
    pub raw: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// The fields chat and text completions share.
struct Common<'r> {
    model: &'r str,
    n: Option<u32>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    seed: Option<i64>,
    stop: Option<&'r StringOrArray>,
    stop_token_ids: Option<&'r [u32]>,
    ignore_eos: bool,
    /// A text completion (raw text out; `max_tokens` 16 when left out, as OpenAI's legacy
    /// API and vLLM), or a chat (the rest of the context, as vLLM).
    text_completion: bool,
    logit_bias: bool,
    /// Fields the engine cannot honour, by name, and whether the request gives each.
    unsupported: Vec<(&'static str, bool)>,
}

/// The chat template's prompt for `req`, and its settings.
pub fn chat(state: &ServeState, req: &ChatCompletionRequest) -> Result<Prepared, ApiError> {
    req.validate().map_err(validation)?;
    #[allow(deprecated)] // the deprecated fields are still sent by clients, and honoured
    let common = Common {
        model: &req.model,
        n: req.n,
        max_tokens: req.output_token_cap(),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        seed: req
            .seed
            .or(req.sampling_seed.and_then(|s| i64::try_from(s).ok())),
        stop: req.stop.as_ref(),
        stop_token_ids: req.stop_token_ids.as_deref(),
        ignore_eos: req.ignore_eos,
        text_completion: false,
        logit_bias: req.logit_bias.as_ref().is_some_and(|b| !b.is_empty()),
        unsupported: [
            ("logprobs", req.logprobs),
            ("top_logprobs", req.top_logprobs.is_some_and(|n| n > 0)),
            ("response_format", req.response_format.is_some()),
            ("regex", req.regex.is_some()),
            ("ebnf", req.ebnf.is_some()),
            ("continue_final_message", req.continue_final_message),
            ("min_tokens", req.min_tokens.is_some_and(|n| n > 0)),
        ]
        .into(),
    };
    common.check(state)?;
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(state, i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut variables: Map<String, Value> = req
        .chat_template_kwargs
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Some(effort) = &req.reasoning_effort {
        variables
            .entry("reasoning_effort")
            .or_insert_with(|| effort.clone().into());
    }
    // `auto` (the default) lets the model choose; `none` keeps the tools from it. Forcing a
    // call (`required`, a named function) needs constrained decoding, which this engine lacks.
    let offered = match &req.tool_choice {
        None | Some(ToolChoice::Value(ToolChoiceValue::Auto)) => req.tools.as_ref(),
        Some(ToolChoice::Value(ToolChoiceValue::None)) => None,
        Some(_) => {
            return Err(ApiError::field(
                "tool_choice",
                "only `auto` and `none` are supported: a forced tool call is not",
            ))
        }
    };
    let tools = offered
        .map(|tools| {
            tools
                .iter()
                .map(|t| serde_json::to_value(t).expect("a tool is JSON"))
        })
        .map(Iterator::collect);
    let opts = RenderOptions {
        add_generation_prompt: true,
        tools,
        variables,
        ..RenderOptions::default()
    };
    let prompt = state
        .tokenizer
        .apply_chat_template(&messages, &opts)
        .map_err(|e| ApiError::field("messages", e.to_string()))?
        .tokens;
    let prompt = (prompt, "messages");
    common.prepare(state, prompt, req.stream, req.stream_options.as_ref())
}

/// The prompt of a text completion, and its settings; `ids`, when the client sent the
/// prompt as token ids (see [`prompt_ids`]), instead of `req.prompt`.
pub fn completion(
    state: &ServeState,
    req: &CompletionRequest,
    ids: Option<Vec<u32>>,
) -> Result<Prepared, ApiError> {
    req.validate().map_err(validation)?;
    let common = Common {
        model: &req.model,
        n: req.n,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        seed: req.seed,
        stop: req.stop.as_ref(),
        stop_token_ids: req.stop_token_ids.as_deref(),
        ignore_eos: req.ignore_eos,
        text_completion: true,
        logit_bias: req.logit_bias.as_ref().is_some_and(|b| !b.is_empty()),
        unsupported: [
            ("echo", req.echo),
            ("logprobs", req.logprobs.is_some()),
            ("suffix", req.suffix.is_some()),
            ("best_of", req.best_of.is_some_and(|n| n > 1)),
            ("regex", req.regex.is_some()),
            ("ebnf", req.ebnf.is_some()),
            ("json_schema", req.json_schema.is_some()),
            ("min_tokens", req.min_tokens.is_some_and(|n| n > 0)),
        ]
        .into(),
    };
    common.check(state)?;
    if let Some(ids) = ids {
        let vocab = state.vocab_size;
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ApiError::field(
                "prompt",
                format!("token id {id} is out of range (the vocabulary has {vocab})"),
            ));
        }
        let prompt = (ids, "prompt");
        return common.prepare(state, prompt, req.stream, req.stream_options.as_ref());
    }
    let text = match &req.prompt {
        StringOrArray::String(text) => text,
        StringOrArray::Array(texts) if texts.len() == 1 => &texts[0],
        StringOrArray::Array(texts) => {
            return Err(ApiError::field(
                "prompt",
                format!(
                    "{} prompts in one request; send one prompt per request",
                    texts.len()
                ),
            ))
        }
    };
    // As HF's tokenizer call: the tokenizer's own special tokens (a BOS) added.
    let prompt = state
        .tokenizer
        .encode(text)
        .map_err(|e| ApiError::field("prompt", e.to_string()))?;
    let prompt = (prompt, "prompt");
    common.prepare(state, prompt, req.stream, req.stream_options.as_ref())
}

/// A completion's prompt given as token ids (`[1, 2, 3]`, or one such list in a list), which
/// OpenAI's API accepts and the request type does not: taken out of `body`, whose prompt is
/// left as an empty string for the rest of the request to be read. `Ok(None)` for a text
/// prompt.
pub fn prompt_ids(body: &mut Value) -> Result<Option<Vec<u32>>, ApiError> {
    let ids = |list: &[Value]| -> Option<Vec<u32>> {
        list.iter()
            .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect()
    };
    let Some(prompt @ Value::Array(_)) = body.get_mut("prompt") else {
        return Ok(None);
    };
    let list = prompt.as_array().expect("matched an array");
    let found = match list.as_slice() {
        [Value::Array(inner)] => ids(inner),
        [Value::Array(_), ..] => {
            return Err(ApiError::field(
                "prompt",
                format!(
                    "{} prompts in one request; send one prompt per request",
                    list.len()
                ),
            ))
        }
        [Value::Number(_), ..] => ids(list),
        _ => return Ok(None),
    };
    let Some(found) = found else {
        let message = "a prompt of token ids must hold ids from 0 to 2^32 - 1";
        return Err(ApiError::field("prompt", message));
    };
    *prompt = Value::String(String::new());
    Ok(Some(found))
}

impl Common<'_> {
    /// What can be refused before the prompt is made.
    fn check(&self, state: &ServeState) -> Result<(), ApiError> {
        if self.model != state.model_id {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "The model `{}` does not exist; this server serves `{}`",
                    self.model, state.model_id
                ),
                param: Some("model".into()),
            });
        }
        if let Some((name, _)) = self.unsupported.iter().find(|(_, given)| *given) {
            return Err(ApiError::field(
                name,
                format!("`{name}` is not supported by this server"),
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::field("n", "only n = 1 is supported"));
        }
        if self.logit_bias {
            return Err(ApiError::field(
                "logit_bias",
                "`logit_bias` is not supported",
            ));
        }
        for (name, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::field(
                    name,
                    format!("`{name}` is not supported; `repetition_penalty` is"),
                ));
            }
        }
        Ok(())
    }

    /// The job's settings over `state`'s defaults, for `prompt`.
    fn prepare(
        &self,
        state: &ServeState,
        (prompt, prompt_field): (Vec<u32>, &str),
        stream: bool,
        stream_options: Option<&openai_protocol::common::StreamOptions>,
    ) -> Result<Prepared, ApiError> {
        let context = state.context;
        if prompt.is_empty() {
            return Err(ApiError::field(prompt_field, "the prompt is empty"));
        }
        if prompt.len() >= context {
            return Err(ApiError::field(
                prompt_field,
                format!(
                    "This model's maximum context length is {context} tokens. However, your \
                     prompt is {} tokens, leaving no room for a completion.",
                    prompt.len()
                ),
            ));
        }
        let room = context - prompt.len();
        let max_new_tokens = match self.max_tokens {
            None if self.text_completion => room.min(16),
            None => room,
            Some(0) => {
                return Err(ApiError::field(
                    "max_tokens",
                    "max_tokens must be at least 1",
                ))
            }
            Some(n) if n as usize > room => {
                return Err(ApiError::field(
                    "max_tokens",
                    format!(
                        "This model's maximum context length is {context} tokens. However, you \
                         requested {} tokens ({} in the messages, {n} in the completion). Please \
                         reduce the length of the messages or completion.",
                        prompt.len() + n as usize,
                        prompt.len()
                    ),
                ))
            }
            Some(n) => n as usize,
        };
        let mut sampling = state.sampling.clone();
        if let Some(t) = self.temperature {
            sampling.temperature = t as f64;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = Some(p as f64).filter(|&p| p != 1.0);
        }
        match self.top_k {
            Some(k) if k <= 0 => sampling.top_k = None, // -1 (and 0) switch it off, as vLLM
            Some(k) => sampling.top_k = Some(k as usize),
            None => {}
        }
        if let Some(p) = self.min_p {
            sampling.min_p = Some(p as f64).filter(|&p| p > 0.0);
        }
        if let Some(r) = self.repetition_penalty {
            sampling.repeat_penalty = r;
        }
        // Without a seed, each request draws its own.
        sampling.seed = match self.seed {
            Some(seed) => seed as u64,
            None => rand::random(),
        };
        sampling.validate().map_err(|e| {
            // The sampler's checks name the setting first, in its own words.
            let message = e.to_string();
            let param = [
                ("temperature", "temperature"),
                ("top-k", "top_k"),
                ("top-p", "top_p"),
                ("min-p", "min_p"),
                ("repeat penalty", "repetition_penalty"),
            ]
            .into_iter()
            .find(|(words, _)| message.starts_with(words))
            .map_or("temperature", |(_, param)| param);
            ApiError::field(param, message)
        })?;
        let stop_strings = self.stop.map(StringOrArray::to_vec).unwrap_or_default();
        if stop_strings.iter().any(String::is_empty) {
            return Err(ApiError::field("stop", "stop strings must not be empty"));
        }
        // Each is searched for after every token, on the thread that runs the whole batch.
        if let Some(long) = stop_strings.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::field(
                "stop",
                format!(
                    "a stop string of {} bytes; at most {MAX_STOP_BYTES} are supported",
                    long.len()
                ),
            ));
        }
        let vocab = state.vocab_size;
        let stop_tokens = self.stop_token_ids.unwrap_or_default().to_vec();
        if stop_tokens.len() > MAX_STOP_IDS {
            return Err(ApiError::field(
                "stop_token_ids",
                format!(
                    "{} stop ids; at most {MAX_STOP_IDS} are supported",
                    stop_tokens.len()
                ),
            ));
        }
        if let Some(id) = stop_tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(ApiError::field(
                "stop_token_ids",
                format!("token id {id} is out of range (the vocabulary has {vocab})"),
            ));
        }
        Ok(Prepared {
            prompt,
            max_new_tokens,
            sampling,
            stop_strings,
            stop_tokens,
            ignore_eos: self.ignore_eos,
            raw: self.text_completion,
            stream,
            include_usage: stream_options.and_then(|o| o.include_usage) == Some(true),
        })
    }
}

/// A request message as the chat template reads it: text content (text parts joined by
/// newlines), tool-call arguments as objects (as HF's templates expect), and the reasoning in
/// the field this model's template reads.
fn message(state: &ServeState, index: usize, m: &ChatMessage) -> Result<Message, ApiError> {
    let mut value = serde_json::to_value(m).expect("a message is JSON");
    let fields = value.as_object_mut().expect("a message is an object");
    let role = match fields.remove("role") {
        Some(Value::String(role)) => role,
        _ => unreachable!("a chat message is tagged by its role"),
    };
    let content = match m {
        ChatMessage::System { content, .. }
        | ChatMessage::User { content, .. }
        | ChatMessage::Tool { content, .. }
        | ChatMessage::Developer { content, .. }
        | ChatMessage::Root { content, .. } => Some(content),
        ChatMessage::Assistant { content, .. } => content.as_ref(),
        ChatMessage::Function { .. } => None,
    };
    if let Some(MessageContent::Parts(parts)) = content {
        let mut texts = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                ContentPart::Text { text } => texts.push(text.as_str()),
                _ => {
                    return Err(ApiError::field(
                        "messages",
                        format!("messages[{index}]: only text content is supported"),
                    ))
                }
            }
        }
        fields.insert("content".into(), texts.join("\n").into());
    }
    if let Some(Value::Array(calls)) = fields.get_mut("tool_calls") {
        for call in calls {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                if let Some(parsed) = args.as_str().and_then(|a| serde_json::from_str(a).ok()) {
                    *args = parsed;
                }
            }
        }
    }
    if let Some(reasoning) = fields.remove("reasoning_content") {
        fields.insert(state.reasoning_field.to_string(), reasoning);
    }
    Ok(Message {
        role,
        fields: std::mem::take(fields),
    })
}

/// The validator's complaints as one 400 naming the first field at fault (`__all__` for a
/// rule over several fields).
fn validation(errors: validator::ValidationErrors) -> ApiError {
    let fields = errors.field_errors();
    let first = fields.iter().min_by_key(|(field, _)| field.to_string());
    let Some((field, list)) = first else {
        return ApiError::new(StatusCode::BAD_REQUEST, errors.to_string());
    };
    let message = list
        .iter()
        .map(|e| match &e.message {
            Some(message) => message.to_string(),
            None => format!("`{field}` is out of range ({})", e.code),
        })
        .collect::<Vec<_>>()
        .join("; ");
    match field.as_ref() {
        "__all__" => ApiError::new(StatusCode::BAD_REQUEST, message),
        field => ApiError::field(field, message),
    }
}
