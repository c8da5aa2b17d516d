//! Chat templates: the Jinja program a checkpoint ships to turn a conversation into prompt
//! text, rendered with minijinja the way HF transformers' `apply_chat_template` renders it.
//!
//! What HF's renderer does, and this one too: `trim_blocks` and `lstrip_blocks` on, the
//! trailing newline of the template dropped, loop controls, Python's string and dict methods
//! (`.strip()`, `.startswith()`, `.items()`; minijinja-contrib's pycompat), `raise_exception`,
//! a `tojson` that writes what Python's `json.dumps` writes, and the special tokens of
//! tokenizer_config.json (`bos_token`, `eos_token`, ...) as variables.

mod environment;
mod python;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use minijinja::value::Serde;
use minijinja::{ErrorKind, Value as JValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use environment::{environment, environment_at};
use python::python_list;

/// One turn of a conversation: its `role`, and every other field as given (`content`, which
/// may be text, null or absent, `reasoning_content`, `tool_calls`, `tool_call_id`, ...), handed
/// to the template as is: templates tell an absent field from a null one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        let mut fields = Map::new();
        fields.insert("content".into(), Value::String(content.into()));
        Message {
            role: role.into(),
            fields,
        }
    }

    /// The text content, where it is text.
    pub fn content(&self) -> Option<&str> {
        self.fields.get("content").and_then(Value::as_str)
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// What a template sees besides the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderOptions {
    /// End with the header of an assistant turn, for the model to continue.
    pub add_generation_prompt: bool,
    /// Tool definitions (JSON schemas), for templates that describe tools to the model.
    pub tools: Option<Vec<Value>>,
    /// Further variables some templates read, such as `enable_thinking`.
    pub variables: Map<String, Value>,
    /// Documents for retrieval-augmented templates (`{"title", "text"}` objects).
    pub documents: Option<Vec<Value>>,
    /// The local time `strftime_now` formats (templates that write today's date); the clock's
    /// when `None`. Set it to render reproducibly.
    pub now: Option<NaiveDateTime>,
}

/// A rendered prompt, refusing to grow past `max` bytes.
struct Bounded {
    text: Vec<u8>,
    max: usize,
    /// A write was refused.
    full: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.max {
            self.full = true;
            return Err(std::io::Error::other("the rendered prompt is too large"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What HF's renderer passes by name; a variable of the same name does not replace it.
const NAMED_ARGUMENTS: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// A checkpoint's chat template(s).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// (name, source); one unnamed entry when the checkpoint has a single template. Sources
    /// are kept as minijinja reads them: HF's `{% generation %}` tags already rewritten.
    templates: Vec<(String, String)>,
    /// `bos_token`, `eos_token`, ... as text, for the templates that write them.
    special_tokens: Map<String, Value>,
    path: PathBuf,
}

/// The tokenizer_config.json keys HF hands to templates (its `special_tokens_map`).
const SPECIAL_TOKEN_KEYS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

impl ChatTemplate {
    /// The template of the checkpoint in `dir`: `chat_template.jinja` when present (as
    /// transformers 5 saves it), else `chat_template` of tokenizer_config.json (`config`), a
    /// string or a list of `{name, template}`. `None` when the checkpoint has none.
    pub fn load(dir: &Path, config: &Value) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let special_tokens = special_tokens(config);
        let jinja = dir.join("chat_template.jinja");
        let (path, templates) = if jinja.exists() {
            let source = std::fs::read_to_string(&jinja).map_err(|cause| Error::Io {
                path: jinja.clone(),
                cause,
            })?;
            (jinja, vec![(String::new(), source)])
        } else {
            let templates = match config.get("chat_template") {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(s)) => vec![(String::new(), s.clone())],
                Some(Value::Array(list)) => named_templates(list, &config_path)?,
                Some(_) => {
                    return Err(Error::config(
                        &config_path,
                        "chat_template",
                        "expected a string or a list of {name, template}",
                    ))
                }
            };
            (config_path, templates)
        };
        Self::new(path, templates, special_tokens).map(Some)
    }

    /// One template from its source, with the special tokens of tokenizer_config.json
    /// (`config`, or null); `path` names it in errors.
    pub fn from_source(path: &Path, source: &str, config: &Value) -> Result<ChatTemplate> {
        let templates = vec![(String::new(), source.to_string())];
        Self::new(path.to_path_buf(), templates, special_tokens(config))
    }

    fn new(
        path: PathBuf,
        templates: Vec<(String, String)>,
        special_tokens: Map<String, Value>,
    ) -> Result<ChatTemplate> {
        let templates = templates
            .into_iter()
            .map(|(name, source)| {
                let source = without_generation_tags(&source).into_owned();
                (name, source)
            })
            .collect();
        let template = ChatTemplate {
            templates,
            special_tokens,
            path,
        };
        // Syntax errors surface at load, naming the file, rather than at the first message.
        for (name, source) in &template.templates {
            environment()
                .template_from_str(source)
                .map_err(|e| template.error(name, e))?;
        }
        Ok(template)
    }

    /// The prompt text for `messages`, as HF's
    /// `apply_chat_template(messages, tools=..., tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        let (name, source) = self.select(opts.tools.is_some())?;
        if messages.is_empty() {
            return Err(Error::Input(
                "cannot apply a chat template to an empty conversation".into(),
            ));
        }
        // HF's keyword arguments: the special tokens, then the caller's variables; the named
        // arguments win over both.
        let mut context: Vec<(String, JValue)> = self
            .special_tokens
            .iter()
            .chain(&opts.variables)
            .filter(|(k, _)| !NAMED_ARGUMENTS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), JValue::from(Serde(v))))
            .collect();
        let messages: Vec<Value> = messages.iter().map(message_for_template).collect();
        context.push(("messages".into(), JValue::from(Serde(&messages))));
        let flag = JValue::from(opts.add_generation_prompt);
        context.push(("add_generation_prompt".into(), flag));
        context.push(("tools".into(), python_list(opts.tools.as_deref())));
        context.push(("documents".into(), python_list(opts.documents.as_deref())));
        let now = opts
            .now
            .unwrap_or_else(|| chrono::Local::now().naive_local());
        // A template's work and output are bounded (`Limits`): a loop without end runs out
        // of fuel, a prompt past the size limit stops being written.
        let limits = crate::Limits::current();
        let mut env = environment_at(now);
        env.set_fuel(Some(limits.template_fuel));
        let mut out = Bounded {
            text: Vec::new(),
            max: limits.max_rendered_bytes,
            full: false,
        };
        let rendered = env.template_from_str(source).and_then(|t| {
            t.render_captured_to(JValue::from_pairs(context), &mut out)
                .map(drop)
        });
        match rendered {
            Ok(_) if out.text.iter().all(u8::is_ascii_whitespace) => Err(self.error(
                name,
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("rendered nothing for {} messages", messages.len()),
                ),
            )),
            Ok(_) => String::from_utf8(out.text).map_err(|_| {
                Error::Input(format!("{}: rendered invalid UTF-8", self.path.display()))
            }),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(self.error(
                name,
                minijinja::Error::new(
                    e.kind(),
                    format!(
                        "ran past {} instructions (Limits::template_fuel): a loop without end?",
                        limits.template_fuel
                    ),
                ),
            )),
            Err(_) if out.full => Err(self.error(
                name,
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "rendered more than {} bytes (Limits::max_rendered_bytes)",
                        out.max
                    ),
                ),
            )),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// The template HF would pick: the only one; or among named ones `tool_use` when tools are
    /// given and it exists, else `default`.
    fn select(&self, with_tools: bool) -> Result<(&str, &str)> {
        if let [(name, source)] = self.templates.as_slice() {
            if name.is_empty() {
                return Ok((name, source));
            }
        }
        let find = |wanted: &str| {
            self.templates
                .iter()
                .find(|(name, _)| name == wanted)
                .map(|(n, s)| (n.as_str(), s.as_str()))
        };
        with_tools
            .then(|| find("tool_use"))
            .flatten()
            .or_else(|| find("default"))
            .ok_or_else(|| {
                Error::config(
                    &self.path,
                    "chat_template",
                    "several named templates and none is called `default`",
                )
            })
    }

    fn error(&self, name: &str, e: minijinja::Error) -> Error {
        let which = if name.is_empty() {
            "chat template".to_string()
        } else {
            format!("chat template `{name}`")
        };
        // raise_exception's message is the template author's sentence: give it as is.
        let message = match (e.kind(), e.detail()) {
            (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
            _ => e.to_string(),
        };
        Error::Template {
            path: self.path.clone(),
            message: format!("{which}: {message}"),
        }
    }
}

/// The names a message's reasoning goes by; the first is the one templates read.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// `message` as HF hands it to a template: fields that are null left out (HF drops them, so
/// that templates see an absent field rather than None), and its reasoning, under whichever
/// name it came, also as `reasoning_content` and as `thinking` (gpt-oss's templates read that
/// one), `thinking` first unless the message has it already.
fn message_for_template(message: &Message) -> Value {
    let present = || message.fields.iter().filter(|(_, v)| !v.is_null());
    let reasoning = REASONING_FIELDS
        .iter()
        .find_map(|k| present().find(|(name, _)| name == k))
        .map(|(_, v)| v.clone());
    // {"thinking": r, **message, "reasoning_content": r}, in Python's key order.
    let mut fields = Map::new();
    if let Some(r) = &reasoning {
        fields.insert("thinking".into(), r.clone());
    }
    fields.insert("role".into(), Value::String(message.role.clone()));
    fields.extend(present().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(r) = reasoning {
        fields.insert("reasoning_content".into(), r);
    }
    Value::Object(fields)
}

/// The source without HF's `{% generation %}` / `{% endgeneration %}` tags (its extension for
/// masking assistant tokens, which renders its body as is), each replaced by `{% with %}` /
/// `{% endwith %}` with the same whitespace control: trim_blocks and lstrip_blocks treat the
/// text around them as HF's renderer does, and assignments inside stay inside, as in the
/// macro body Jinja2 makes of the block. Only the exact tags are replaced, wherever they are.
fn without_generation_tags(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains("generation") {
        return source.into();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        match generation_tag(tag) {
            Some((len, replacement)) => {
                out.push_str(&replacement);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

/// `{%[-+]? (end)?generation [-+]?%}` at the start of `s`: its length and its replacement.
fn generation_tag(s: &str) -> Option<(usize, String)> {
    let body = s.strip_prefix("{%")?;
    let (open, body) = match body.strip_prefix(['-', '+']) {
        Some(b) => (&body[..1], b),
        None => ("", body),
    };
    let body = body.trim_start();
    let (word, body) = if let Some(b) = body.strip_prefix("endgeneration") {
        ("endwith", b)
    } else {
        ("with", body.strip_prefix("generation")?)
    };
    let body = body.trim_start();
    let (close, body) = match body.strip_prefix(['-', '+']) {
        Some(b) => (&body[..1], b),
        None => ("", body),
    };
    let rest = body.strip_prefix("%}")?;
    Some((s.len() - rest.len(), format!("{{%{open} {word} {close}%}}")))
}

/// The special tokens of tokenizer_config.json HF hands to templates, as text.
fn special_tokens(config: &Value) -> Map<String, Value> {
    SPECIAL_TOKEN_KEYS
        .iter()
        .filter_map(|&key| {
            Some((
                key.to_string(),
                Value::String(special_token_text(config, key)?),
            ))
        })
        .collect()
}

/// `bos_token` / `eos_token` / ... of tokenizer_config.json: a string, or an AddedToken object.
pub(crate) fn special_token_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

fn named_templates(list: &[Value], path: &Path) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|entry| {
            let field = |key: &str| {
                entry.get(key).and_then(Value::as_str).ok_or_else(|| {
                    Error::config(
                        path,
                        "chat_template",
                        format!("every entry of the list needs a string `{key}`"),
                    )
                })
            };
            Ok((field("name")?.to_string(), field("template")?.to_string()))
        })
        .collect()
}
