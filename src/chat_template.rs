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
use minijinja::value::{Kwargs, Object, ObjectRepr, Serde, ValueKind};
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
    /// The local time `strftime_now` formats (templates that write today's date); the clock's
    /// when `None`. Set it to render reproducibly.
    pub now: Option<NaiveDateTime>,
}

/// A checkpoint's chat template(s).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// (name, source); one unnamed entry when the checkpoint has a single template.
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
        let template = ChatTemplate {
            templates,
            special_tokens,
            path,
        };
        // Syntax errors surface at load, naming the file, rather than at the first message.
        for (name, source) in &template.templates {
            environment()
                .template_from_str(&without_generation_tags(source))
                .map_err(|e| template.error(name, e))?;
        }
        Ok(template)
    }

    /// The prompt text for `messages`, as HF's
    /// `apply_chat_template(messages, tools=..., tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        let (name, source) = self.select(opts.tools.is_some())?;
        let mut context = self.special_tokens.clone();
        context.extend(opts.variables.clone());
        let messages: Vec<Value> = messages.iter().map(with_reasoning_aliases).collect();
        context.insert("messages".into(), Value::Array(messages));
        context.insert(
            "add_generation_prompt".into(),
            opts.add_generation_prompt.into(),
        );
        // HF passes both, None when not given: defined, and none.
        context.insert(
            "tools".into(),
            opts.tools.clone().map_or(Value::Null, Value::Array),
        );
        context.insert("documents".into(), Value::Null);
        let now = opts
            .now
            .unwrap_or_else(|| chrono::Local::now().naive_local());
        let env = environment_at(now);
        let source = without_generation_tags(source);
        env.template_from_str(&source)
            .and_then(|t| t.render(python_value(&Value::Object(context))))
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

/// `message` as HF hands it to a template: its reasoning, under whichever name it came, also
/// as `reasoning_content` and as `thinking` (gpt-oss's templates read that one), `thinking`
/// first unless the message has it already.
fn with_reasoning_aliases(message: &Message) -> Value {
    let reasoning = REASONING_FIELDS
        .iter()
        .find_map(|k| message.fields.get(*k).filter(|v| !v.is_null()))
        .cloned();
    // {"thinking": r, **message, "reasoning_content": r}, in Python's key order.
    let mut fields = Map::new();
    if let Some(r) = &reasoning {
        fields.insert("thinking".into(), r.clone());
    }
    fields.insert("role".into(), Value::String(message.role.clone()));
    fields.extend(message.fields.clone());
    if let Some(r) = reasoning {
        fields.insert("reasoning_content".into(), r);
    }
    Value::Object(fields)
}

/// Python's `None`, as HF hands it to a template (tools or documents not given, a null field):
/// false, written `None`, `is none`, but, unlike minijinja's none, not iterable: a `for` over it
/// fails, as in Python.
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

/// JSON as the Python objects HF's template sees: nulls become [`PyNone`].
fn python_value(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from_object(PyNone),
        Value::Array(items) => items.iter().map(python_value).collect(),
        Value::Object(map) => {
            JValue::from_pairs(map.iter().map(|(k, v)| (k.as_str(), python_value(v))))
        }
        other => JValue::from(Serde(other)),
    }
}

/// A template value as JSON for `tojson`, refusing what Python's `json.dumps` refuses: an
/// undefined value, and a lazy sequence (`map`, `select`: Python's generators).
fn json_of(v: &JValue) -> Result<Value, minijinja::Error> {
    let refuse = |what: &str| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: Object of type {what} is not JSON serializable"),
        )
    };
    Ok(match v.kind() {
        ValueKind::Undefined => return Err(refuse("Undefined")),
        ValueKind::Iterable => return Err(refuse("generator")),
        ValueKind::None => Value::Null,
        _ if is_python_none(v) => Value::Null,
        ValueKind::Seq => Value::Array(
            v.try_iter()?
                .map(|x| json_of(&x))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Map => {
            let mut map = Map::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = key.as_str().map_or_else(|| key.to_string(), String::from);
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
/// minijinja's return lists: a generator iterates (also through `list`) but `tojson` refuses it
/// and it has no length. And they yield nothing for a false value such as None, where
/// minijinja's would iterate it. Wrapped here to behave as Python's.
fn python_generators(env: &mut Environment<'static>) {
    use minijinja::filters;
    use minijinja::value::{Rest, ValueOrKwargs};
    use minijinja::State;
    type Args = Rest<ValueOrKwargs>;

    fn generator(
        value: &JValue,
        run: impl FnOnce(JValue) -> Result<Vec<JValue>, minijinja::Error>,
    ) -> Result<JValue, minijinja::Error> {
        let items = if is_python_none(value) {
            Vec::new()
        } else {
            run(value.clone())?
        };
        Ok(JValue::make_iterable(move || items.clone().into_iter()))
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
/// masking assistant tokens, a no-op when rendering), each replaced by a tag that does nothing
/// (`if true` / `endif`) with the same whitespace control, so that trim_blocks and
/// lstrip_blocks treat the text around it as HF's renderer does.
fn without_generation_tags(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains("generation") {
        return source.into();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{open} {r} {close}%}}")),
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out.into()
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

/// Python's `datetime.strftime(format)`, through chrono's directives (the C ones Python
/// passes on); a directive chrono does not know is an error, never a panic.
fn strftime(now: NaiveDateTime, format: &str) -> Result<String, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", now.format(format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format the time as {format:?}"),
        )
    })?;
    Ok(out)
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
    // Jinja2's tests where minijinja's differ: None (ours and Python's) is none and not
    // iterable; an undefined value is iterable (as Jinja2's Undefined is).
    python_generators(&mut env);
    env.add_test("none", |v: JValue| is_python_none(&v));
    env.add_test("iterable", |v: JValue| {
        !is_python_none(&v) && (v.is_undefined() || v.try_iter().is_ok())
    });
    env
}

/// HF's `tojson`: `json.dumps(value, ensure_ascii=False, indent=..., separators=...,
/// sort_keys=...)`. minijinja's own escapes HTML characters and spaces differently.
fn tojson(value: JValue, kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
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
    let text = String::from_utf8(out).expect("serde_json writes UTF-8");
    Ok(JValue::from_safe_string(text))
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
    fn strftime_now_formats_the_pinned_time_and_refuses_what_it_cannot_format() {
        let now =
            NaiveDateTime::parse_from_str("2026-07-04 09:05:03", "%Y-%m-%d %H:%M:%S").unwrap();
        let env = environment_at(now);
        let render = |s: &str| env.render_str(s, ());
        assert_eq!(
            render("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %-d, %A %H:%M') }}").unwrap(),
            "2026-07-04|04 Jul 2026|July 4, Saturday 09:05"
        );
        let err = render("{{ strftime_now('%Q') }}").unwrap_err();
        assert!(err.to_string().contains("cannot format"), "{err}");
    }

    #[test]
    fn generation_tags_render_as_nothing_with_hf_s_whitespace() {
        let source = "{% for m in messages %}\n  {%- generation -%}\n {{ m }}\n{% endgeneration %}\n{% endfor %}";
        assert_eq!(
            without_generation_tags(source),
            "{% for m in messages %}\n  {%- if true -%}\n {{ m }}\n{% endif %}\n{% endfor %}"
        );
        // What HF's renderer gives for the source with its generation tags.
        let ctx = serde_json::json!({"messages": ["a", "b"]});
        assert_eq!(render_str(&without_generation_tags(source), ctx), "a\nb\n");
    }

    #[test]
    fn none_is_python_s_none() {
        // What HF hands a template for a null or a missing `tools`: defined, none, false,
        // written None, not iterable; filters that yield generators yield nothing from it.
        let ctx = python_value(&serde_json::json!({"t": null, "xs": [1, 2]}));
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
        assert!(render("{{ xs|map('string')|tojson }}").is_err());
        assert_eq!(
            render("{{ xs|map('string')|list|tojson }}").unwrap(),
            r#"["1", "2"]"#
        );
    }
}
