//! Chat templates: the Jinja program a checkpoint ships to turn a conversation into prompt
//! text, rendered with minijinja the way HF transformers' `apply_chat_template` renders it.
//!
//! What HF's renderer does, and this one too: `trim_blocks` and `lstrip_blocks` on, the
//! trailing newline of the template dropped, loop controls, Python's string and dict methods
//! (`.strip()`, `.startswith()`, `.items()`; minijinja-contrib's pycompat), `raise_exception`,
//! a `tojson` that writes what Python's `json.dumps` writes, and the special tokens of
//! tokenizer_config.json (`bos_token`, `eos_token`, ...) as variables.

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use std::sync::Arc;

use chrono::NaiveDateTime;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Serde, ValueKind};
use minijinja::{Environment, ErrorKind, Value as JValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

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
        let env = environment_at(now);
        env.template_from_str(source)
            .and_then(|t| t.render(JValue::from_pairs(context)))
            .map_err(|e| self.error(name, e))
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

/// Python's `None` where HF hands it for `tools` or `documents` not given: false, written
/// `None`, `is none`, but, unlike minijinja's none, not iterable, so that a `for` over it fails
/// as in Python (templates that loop over `tools` unguarded refuse a conversation without
/// tools, as under HF). Nulls elsewhere are minijinja's own none, which compares equal to the
/// `none` literal.
#[derive(Debug)]
struct PyNone;

impl Object for PyNone {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn is_true(self: &Arc<Self>) -> bool {
        false
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("None")
    }
}

fn is_python_none(v: &JValue) -> bool {
    v.is_none() || v.downcast_object_ref::<PyNone>().is_some()
}

/// A list argument as HF passes it: the list, or None.
fn python_list(list: Option<&[Value]>) -> JValue {
    match list {
        Some(items) => JValue::from(Serde(items)),
        None => JValue::from_object(PyNone),
    }
}

/// What Jinja2's `map`, `select`, `reject`, `selectattr` and `rejectattr` return: a generator,
/// iterated once, of no known length, always true, which `tojson` refuses.
#[derive(Debug)]
struct Generator(std::sync::Mutex<Vec<JValue>>);

impl Object for Generator {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Iterable
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        // A second pass finds it exhausted, as in Python.
        let items = self.0.lock().map(|mut v| std::mem::take(&mut *v));
        Enumerator::Iter(Box::new(items.unwrap_or_default().into_iter()))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        None
    }

    fn is_true(self: &Arc<Self>) -> bool {
        true
    }
}

fn is_generator(v: &JValue) -> bool {
    v.downcast_object_ref::<Generator>().is_some()
}

/// A template value as JSON for `tojson`, refusing what Python's `json.dumps` refuses: an
/// undefined value and a generator. Map keys as Python writes them (`true`, `null`, numbers).
fn json_of(v: &JValue) -> Result<Value, minijinja::Error> {
    let refuse = |what: &str| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: Object of type {what} is not JSON serializable"),
        )
    };
    if is_generator(v) {
        return Err(refuse("generator"));
    }
    Ok(match v.kind() {
        ValueKind::Undefined => return Err(refuse("Undefined")),
        _ if is_python_none(v) => Value::Null,
        ValueKind::Seq | ValueKind::Iterable => Value::Array(
            v.try_iter()?
                .map(|x| json_of(&x))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Map => {
            let mut map = Map::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::Bool => key.is_true().to_string(),
                    ValueKind::None => "null".into(),
                    _ => key.as_str().map_or_else(|| key.to_string(), String::from),
                };
                map.insert(key, json_of(&item)?);
            }
            Value::Object(map)
        }
        _ => serde_json::to_value(v).map_err(|e| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: cannot serialize")
                .with_source(e)
        })?,
    })
}

/// Jinja2's `map`, `select`, `reject`, `selectattr` and `rejectattr` return generators, where
/// minijinja's return lists ([`Generator`]); and they yield nothing for a false value such as
/// None, where minijinja's would iterate it. Wrapped here to behave as Python's.
fn python_generators(env: &mut Environment<'static>) {
    use minijinja::filters;
    use minijinja::value::{Rest, ValueOrKwargs};
    use minijinja::State;
    type Args = Rest<ValueOrKwargs>;

    fn generator(
        value: &JValue,
        run: impl FnOnce(JValue) -> Result<Vec<JValue>, minijinja::Error>,
    ) -> Result<JValue, minijinja::Error> {
        // Jinja2's filters start with `if value:`: nothing from None, 0, "" or [].
        let items = if value.is_true() {
            run(value.clone())?
        } else {
            Vec::new()
        };
        Ok(JValue::from_object(Generator(std::sync::Mutex::new(items))))
    }
    env.add_filter("map", |state: &mut State, v: JValue, args: Args| {
        generator(&v, |v| filters::map(state, v, args))
    });
    env.add_filter(
        "select",
        |state: &mut State, v: JValue, test: Option<String>, args: Args| {
            generator(&v, |v| {
                filters::select(state, v, test.map(Into::into), args)
            })
        },
    );
    env.add_filter(
        "reject",
        |state: &mut State, v: JValue, test: Option<String>, args: Args| {
            generator(&v, |v| {
                filters::reject(state, v, test.map(Into::into), args)
            })
        },
    );
    env.add_filter(
        "selectattr",
        |state: &mut State, v: JValue, attr: String, test: Option<String>, args: Args| {
            generator(&v, |v| {
                filters::selectattr(state, v, attr.into(), test.map(Into::into), args)
            })
        },
    );
    env.add_filter(
        "rejectattr",
        |state: &mut State, v: JValue, attr: String, test: Option<String>, args: Args| {
            generator(&v, |v| {
                filters::rejectattr(state, v, attr.into(), test.map(Into::into), args)
            })
        },
    );
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

/// [`environment`] with `strftime_now` reading `now`.
fn environment_at(now: NaiveDateTime) -> Environment<'static> {
    let mut env = environment();
    env.add_function("strftime_now", move |format: String| strftime(now, &format));
    env
}

/// Python's `datetime.strftime(format)` for a naive local time, as glibc formats it: chrono
/// formats each directive it shares with C; `%Z` and `%z` are empty (no zone), `%f` is
/// microseconds, the flags `-`, `_`, `0` and `^` and a width apply, and an unknown directive
/// stays as written. Never fails.
fn strftime(now: NaiveDateTime, format: &str) -> String {
    // The conversions chrono formats as C does.
    const CHRONO: &str = "aAbBcCdDeFgGhHIjklmMnpPrRStTuUVwWxXyY";
    let mut out = String::with_capacity(format.len() + 16);
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let spec = &rest[at + 1..];
        let flag = spec.chars().next().filter(|c| "-_0^#".contains(*c));
        let after_flag = &spec[flag.map_or(0, char::len_utf8)..];
        let digits = after_flag.len()
            - after_flag
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        // Widths beyond any date's are a template's attempt at a huge string: capped.
        let width: usize = after_flag[..digits].parse().unwrap_or(0).min(256);
        // glibc's E and O modifiers ask for a locale's alternative form: in C, the plain one.
        let conv_text = after_flag[digits..].trim_start_matches(['E', 'O']);
        let Some(conv) = conv_text.chars().next() else {
            out.push_str(&rest[at..]);
            return out;
        };
        let consumed = rest.len() - conv_text.len() + conv.len_utf8();
        let base = match conv {
            '%' => Some("%".to_string()),
            'Z' | 'z' => Some(String::new()),
            'f' => Some(format!("{:06}", now.and_utc().timestamp_subsec_micros())),
            c if CHRONO.contains(c) => {
                let pad = match flag {
                    Some(f @ ('-' | '_' | '0')) => f.to_string(),
                    _ => String::new(),
                };
                let mut text = String::new();
                use std::fmt::Write;
                write!(text, "{}", now.format(&format!("%{pad}{c}")))
                    .ok()
                    .map(|_| text)
            }
            _ => None,
        };
        match base {
            None => out.push_str(&rest[at..consumed]),
            Some(mut text) => {
                if flag == Some('^') {
                    text = text.to_uppercase();
                }
                let numeric = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit());
                let fill = if numeric && flag != Some('_') {
                    '0'
                } else {
                    ' '
                };
                for _ in text.chars().count()..width {
                    out.push(fill);
                }
                out.push_str(&text);
            }
        }
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    out
}

/// A Jinja environment configured as HF's (`ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True)` with loop controls and its own globals and filters), but for
/// `strftime_now` ([`environment_at`]).
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<JValue, _> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
    });
    env.add_filter("tojson", tojson);
    python_generators(&mut env);
    // Jinja2's Undefined has a length, 0; minijinja's has none.
    for name in ["length", "count"] {
        env.add_filter(name, |v: JValue| -> Result<JValue, minijinja::Error> {
            if v.is_undefined() {
                return Ok(JValue::from(0));
            }
            let n = v.len().ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot calculate length of value of type {}", v.kind()),
                )
            })?;
            Ok(JValue::from(n))
        });
    }
    // Jinja2's tests where minijinja's differ: None (ours and Python's) is none and not
    // iterable; an undefined value is iterable (as Jinja2's Undefined is).
    env.add_test("none", |v: JValue| is_python_none(&v));
    env.add_test("iterable", |v: JValue| {
        is_generator(&v) || !is_python_none(&v) && (v.is_undefined() || v.try_iter().is_ok())
    });
    env
}

/// HF's `tojson`: `json.dumps(value, ensure_ascii=..., indent=..., separators=...,
/// sort_keys=...)`, `ensure_ascii` false unless asked. minijinja's own escapes HTML characters
/// and spaces differently.
fn tojson(value: JValue, kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let bad = |e: serde_json::Error| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            .with_source(e)
    };
    let mut json = json_of(&value)?;
    if sort_keys == Some(true) {
        json.sort_all_objects();
    }
    // Python's defaults: ", " between items, or "," when indenting (the newline separates).
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let formatter = PythonJson {
        item,
        key,
        indent: indent.map(|n| " ".repeat(n)),
        depth: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    json.serialize(&mut ser).map_err(bad)?;
    let mut text = String::from_utf8(out).expect("serde_json writes UTF-8");
    if ensure_ascii == Some(true) {
        text = ascii_escaped(&text);
    }
    Ok(JValue::from_safe_string(text))
}

/// JSON text with every non-ASCII character as `\uXXXX` (UTF-16 units, lowercase hex), as
/// Python's `ensure_ascii=True` writes it. Non-ASCII occurs only inside JSON strings, so this
/// is exact.
fn ascii_escaped(json: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0u16; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// The layout of Python's `json.dumps`: chosen separators, and with an indent one item per
/// line (empty containers stay `[]` and `{}`).
struct PythonJson {
    item: String,
    key: String,
    indent: Option<String>,
    depth: usize,
    has_value: bool,
}

impl PythonJson {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.depth {
                w.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + std::io::Write>(&mut self, w: &mut W, c: &[u8]) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(c)
    }

    fn close<W: ?Sized + std::io::Write>(&mut self, w: &mut W, c: &[u8]) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(c)
    }

    fn item<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(self.item.as_bytes())?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(self.key.as_bytes())
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_str(source: &str, ctx: Value) -> String {
        environment()
            .render_str(source, JValue::from(Serde(&ctx)))
            .unwrap()
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let ctx =
            serde_json::json!({"v": {"b": [1, 2.5, "it's <é>"], "a": {}, "c": [], "d": null}});
        // json.dumps(v, ensure_ascii=False)
        assert_eq!(
            render_str("{{ v | tojson }}", ctx.clone()),
            r#"{"b": [1, 2.5, "it's <é>"], "a": {}, "c": [], "d": null}"#
        );
        // json.dumps(v, ensure_ascii=False, indent=2, sort_keys=True)
        assert_eq!(
            render_str("{{ v | tojson(indent=2, sort_keys=true) }}", ctx.clone()),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.5,\n    \"it's <é>\"\n  ],\n  \"c\": [],\n  \"d\": null\n}"
        );
        assert_eq!(
            render_str("{{ v.b | tojson(separators=[',', ':']) }}", ctx),
            r#"[1,2.5,"it's <é>"]"#
        );
    }

    #[test]
    fn whitespace_control_is_hf_s() {
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indent before it,
        // and one trailing newline of the template goes.
        let source = "{% for x in xs %}\n    {% if x %}\n{{ x }}\n    {% endif %}\n{% endfor %}\n";
        let ctx = serde_json::json!({"xs": ["a", "", "b"]});
        assert_eq!(render_str(source, ctx), "a\nb\n");
    }

    #[test]
    fn python_string_methods_and_raise_exception() {
        let ctx = serde_json::json!({"s": "  <think>x</think>\nHi  "});
        assert_eq!(
            render_str(
                "{{ s.strip().split('</think>')[-1].lstrip('\\n') }}\
                 {% if s.strip().startswith('<think>') %}|yes{% endif %}",
                ctx
            ),
            "Hi|yes"
        );
        let err = environment()
            .render_str("{{ raise_exception('roles must alternate') }}", ())
            .unwrap_err();
        assert_eq!(err.detail(), Some("roles must alternate"));
    }

    #[test]
    fn strftime_now_formats_the_pinned_time_as_python_does() {
        let now =
            NaiveDateTime::parse_from_str("2026-07-04 09:05:03", "%Y-%m-%d %H:%M:%S").unwrap();
        let env = environment_at(now);
        let render = |s: &str| env.render_str(s, ());
        assert_eq!(
            render("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %-d, %A %H:%M') }}").unwrap(),
            "2026-07-04|04 Jul 2026|July 4, Saturday 09:05"
        );
        // As Python (glibc) writes them: unknown directives as written, no zone for a naive
        // time, microseconds, flags and widths.
        assert_eq!(
            render("{{ strftime_now('%Q|100%|%Z%z|%f|%^a|%10d|%_d|%Od|%e|%j|%p %I|%y|%%') }}")
                .unwrap(),
            "%Q|100%||000000|SAT|0000000004| 4|04| 4|185|AM 09|26|%"
        );
    }

    #[test]
    fn generation_tags_are_found_exactly_and_scope_their_assignments() {
        // Text that only looks like a tag, an unclosed `{%`, and spacing variants.
        let source = "{{ '{%' }}{%generation%}{% set x = 1 %}{%- endgeneration +%}[{{ x }}]";
        assert_eq!(
            without_generation_tags(source),
            "{{ '{%' }}{% with %}{% set x = 1 %}{%- endwith +%}[{{ x }}]"
        );
        // As in HF, where the block is a macro body: x stays undefined outside it.
        assert_eq!(
            render_str(&without_generation_tags(source), serde_json::json!({})),
            "{%[]"
        );
        assert_eq!(
            without_generation_tags("{% set generation = 1 %}{%"),
            "{% set generation = 1 %}{%"
        );
    }

    #[test]
    fn generation_tags_render_as_nothing_with_hf_s_whitespace() {
        let source = "{% for m in messages %}\n  {%- generation -%}\n {{ m }}\n{% endgeneration %}\n{% endfor %}";
        assert_eq!(
            without_generation_tags(source),
            "{% for m in messages %}\n  {%- with -%}\n {{ m }}\n{% endwith %}\n{% endfor %}"
        );
        // What HF's renderer gives for the source with its generation tags.
        let ctx = serde_json::json!({"messages": ["a", "b"]});
        assert_eq!(render_str(&without_generation_tags(source), ctx), "a\nb\n");
    }

    #[test]
    fn tools_not_given_are_python_s_none() {
        // What HF hands a template for `tools` not given: defined, none, false, written None,
        // not iterable; filters that make generators yield nothing from it.
        let ctx = JValue::from_pairs([("t", python_list(None)), ("n", JValue::from(()))]);
        let env = environment();
        let render = |s: &str| env.render_str(s, ctx.clone());
        assert_eq!(
            render("{{ t is defined }} {{ t is none }} {{ t is iterable }} {% if not t %}F{% endif %} {{ t }}").unwrap(),
            "True True False F None"
        );
        assert_eq!(
            render("{{ t|selectattr('type')|list|length }}").unwrap(),
            "0"
        );
        assert!(render("{% for x in t %}{% endfor %}").is_err());
        // Other nulls are minijinja's none, equal to the literal.
        assert_eq!(
            render("{{ n == none }} {{ n is none }}").unwrap(),
            "True True"
        );
    }

    #[test]
    fn filters_make_python_generators() {
        let ctx = serde_json::json!({"xs": [1, 2], "zero": 0});
        let env = environment();
        let render = |s: &str| env.render_str(s, JValue::from(Serde(&ctx)));
        // Iterated once, with loop.last known; true even when empty; no length; no JSON.
        assert_eq!(
            render("{% set g = xs|map('string') %}{% for x in g %}{{ x }}{{ loop.last }} {% endfor %}|{{ g|list }}")
                .unwrap(),
            "1False 2True |[]"
        );
        assert_eq!(
            render("{% if xs|select('none') %}T{% endif %}").unwrap(),
            "T"
        );
        assert!(render("{{ xs|map('string')|length }}").is_err());
        assert!(render("{{ xs|map('string')|tojson }}").is_err());
        assert_eq!(
            render("{{ xs|map('string')|list|tojson }}").unwrap(),
            r#"["1", "2"]"#
        );
        assert_eq!(render("{{ zero|select|list }}").unwrap(), "[]");
    }

    #[test]
    fn null_fields_of_a_message_are_left_out_as_hf_leaves_them() {
        let message: Message = serde_json::from_value(serde_json::json!(
            {"role": "assistant", "content": null, "reasoning": "r", "tool_calls": [{"a": null}]}
        ))
        .unwrap();
        assert_eq!(
            message_for_template(&message),
            serde_json::json!({"thinking": "r", "role": "assistant", "reasoning": "r",
                               "tool_calls": [{"a": null}], "reasoning_content": "r"})
        );
    }

    #[test]
    fn tojson_escapes_non_ascii_when_asked_and_writes_python_s_keys() {
        let ctx = serde_json::json!({"s": "é👋"});
        assert_eq!(
            render_str("{{ s|tojson(ensure_ascii=true) }}", ctx),
            r#""\u00e9\ud83d\udc4b""#
        );
        assert_eq!(
            render_str(
                "{{ {true: 1, none: 2, 3: 4}|tojson }}",
                serde_json::json!({})
            ),
            r#"{"true": 1, "null": 2, "3": 4}"#
        );
    }
}
