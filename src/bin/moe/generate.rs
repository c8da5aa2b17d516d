//! `moe generate` and `moe prompt`: one prompt in, its continuation (or rendering) out.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use moe_runtime::chat_template::{Message, RenderOptions};
use moe_runtime::generate::{self, Flow, GenerateOptions, Generation, StopReason};
use moe_runtime::text::generate_text;
use moe_runtime::tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::bounds;
use crate::common::{read_input, Common, ModelArg, SamplingArgs};
use crate::output::{self, note};
use crate::show::Printer;

pub enum Prompt {
    Text(String),
    /// Rendered through the chat template as one user turn.
    Chat {
        system: Option<String>,
        user: String,
    },
    Tokens(Vec<u32>),
}

pub struct Request {
    pub prompt: Prompt,
    /// `--max-new-tokens`; left out, [`DEFAULT_NEW_TOKENS`] within what the context leaves.
    pub max_new_tokens: Option<usize>,
    pub stop_strings: Vec<String>,
    pub show_reasoning: bool,
    pub json: bool,
}

/// New tokens when `--max-new-tokens` is left out.
pub const DEFAULT_NEW_TOKENS: usize = 32;

pub fn run(common: &Common, req: &Request, sampling: &SamplingArgs) -> Result<()> {
    if let Some(n) = req.max_new_tokens {
        bounds::positive("--max-new-tokens", n)?;
    }
    match &req.prompt {
        Prompt::Text(text) | Prompt::Chat { user: text, .. } if text.is_empty() => {
            bail!("--prompt is empty: give the text to continue (or --tokens)")
        }
        Prompt::Tokens(ids) if ids.is_empty() => bail!("--tokens lists no token ids"),
        _ => {}
    }
    let (model, dir) = common.load()?;
    let tokenizer = match req.prompt {
        Prompt::Tokens(_) => None,
        _ => Some(Tokenizer::load(&dir)?),
    };
    let ids = match (&req.prompt, &tokenizer) {
        (Prompt::Tokens(ids), _) => ids.clone(),
        (Prompt::Chat { system, user }, Some(tok)) => {
            let mut messages: Vec<Message> = system.iter().map(Message::system).collect();
            messages.push(Message::user(user));
            let opts = RenderOptions {
                add_generation_prompt: true,
                ..RenderOptions::default()
            };
            tok.apply_chat_template(&messages, &opts)?.tokens
        }
        (Prompt::Text(text), Some(tok)) => tok.encode(text)?,
        (_, None) => unreachable!("text prompts load a tokenizer"),
    };
    let context = model.config().max_position_embeddings;
    let max_new_tokens =
        bounds::new_tokens(ids.len(), req.max_new_tokens, DEFAULT_NEW_TOKENS, context)?;
    // Both within the context, so the sum does not wrap.
    bounds::caches(&model, 1, (ids.len() + max_new_tokens).min(context))?;
    let opts = GenerateOptions {
        max_new_tokens,
        stop_tokens: generate::stop_tokens(&dir, tokenizer.as_ref())?,
        sampling: sampling.config(&dir)?,
    };
    let (gen, as_text) = match &tokenizer {
        None => (
            generate::generate(&model, &ids, &opts, |_| Flow::Continue)?,
            None,
        ),
        Some(tok) => {
            let mut cache = model.new_cache();
            let mut printer = Printer::new(req.show_reasoning);
            let out = generate_text(
                &model,
                tok,
                &mut cache,
                &ids,
                &opts,
                &req.stop_strings,
                |part, piece| match req.json {
                    true => Flow::Continue,
                    false => printer.piece(part, piece),
                },
            )?;
            if !req.json {
                printer.finish(&out.tool_calls)?;
            }
            (out.generation.clone(), Some(out))
        }
    };
    let s = &gen.stats;
    let mut stdout = output::stdout();
    if req.json {
        let mut report = json!({
            "tokens": gen.tokens,
            "prompt_tokens": s.prompt_tokens,
            "generated_tokens": s.generated_tokens,
            "stop": stop_name(gen.stop),
            "time_to_first_token_s": s.time_to_first_token_secs(),
            "prefill_tokens_per_s": s.prefill_tokens_per_s(),
            "decode_tokens_per_s": s.decode_tokens_per_s(),
        });
        if let Some(out) = as_text {
            report["text"] = out.text.into();
            report["reasoning"] = out.reasoning.into();
            report["tool_calls"] = out
                .tool_calls
                .iter()
                .map(|c| json!({"name": c.name, "arguments": c.arguments}))
                .collect();
        }
        writeln!(stdout, "{report}")?;
    } else {
        if as_text.is_none() {
            let ids: Vec<String> = gen.tokens.iter().map(|t| t.to_string()).collect();
            writeln!(stdout, "{}", ids.join(","))?;
        }
        note!("{}", speed(&gen));
    }
    Ok(())
}

/// One line on how fast a generation went, for people.
pub fn speed(gen: &Generation) -> String {
    let s = &gen.stats;
    format!(
        "{} tokens; prefill {} tokens at {:.1} tokens/s, decode {:.1} tokens/s{}",
        s.generated_tokens,
        s.prefilled_tokens,
        s.prefill_tokens_per_s(),
        s.decode_tokens_per_s(),
        match gen.stop {
            StopReason::ContextFull => "; the context is full",
            _ => "",
        }
    )
}

fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::StopToken => "stop_token",
        StopReason::StopString => "stop_string",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextFull => "context_full",
        StopReason::Callback => "callback",
    }
}

/// `moe prompt`: the conversation in `messages` rendered by the chat template, and its ids.
pub fn prompt(
    model: &ModelArg,
    messages: &Path,
    add_generation_prompt: bool,
    json: bool,
) -> Result<()> {
    let dir = model.dir()?;
    let tokenizer = Tokenizer::load(&dir)?;
    let text = read_input("--messages", messages)?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", messages.display()))?;
    let mut file = match value {
        Value::Array(_) => serde_json::Map::from_iter([("messages".to_string(), value)]),
        Value::Object(o) => o,
        _ => bail!(
            "{}: expected a list of messages or {{\"messages\": [...]}}",
            messages.display()
        ),
    };
    let mut list_field = |key: &str| match file.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) => Ok(Some(list)),
        Some(_) => Err(anyhow::anyhow!(
            "{}: `{key}` must be a list",
            messages.display()
        )),
    };
    let (tools, documents) = (list_field("tools")?, list_field("documents")?);
    let list = file.remove("messages").unwrap_or(Value::Null);
    let list: Vec<Message> = serde_json::from_value(list).with_context(|| {
        format!(
            "{}: `messages` must be a list of {{\"role\": ..., \"content\": ...}}",
            messages.display()
        )
    })?;
    // The rest (`enable_thinking`, `reasoning_effort`, ...) goes to the template, as HF's
    // apply_chat_template passes its keyword arguments.
    let opts = RenderOptions {
        add_generation_prompt,
        tools,
        documents,
        variables: file,
        ..RenderOptions::default()
    };
    let rendered = tokenizer.apply_chat_template(&list, &opts)?;
    let mut out = output::stdout();
    if json {
        let report = json!({"text": rendered.text, "tokens": rendered.tokens});
        writeln!(out, "{report}")?;
    } else {
        writeln!(out, "{}", rendered.text)?;
    }
    Ok(())
}
