//! Python's semantics where templates rely on them and minijinja's differ: `None`, Jinja2's
//! one-shot generators, and `tojson` as `json.dumps` writes it.

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Serde, ValueKind};
use minijinja::{Environment, ErrorKind, Value as JValue};
use serde::Serialize;
use serde_json::{Map, Value};

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

pub(super) fn is_python_none(v: &JValue) -> bool {
    v.is_none() || v.downcast_object_ref::<PyNone>().is_some()
}

/// A list argument as HF passes it: the list, or None.
pub(super) fn python_list(list: Option<&[Value]>) -> JValue {
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

pub(super) fn is_generator(v: &JValue) -> bool {
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
pub(super) fn python_generators(env: &mut Environment<'static>) {
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

/// HF's `tojson`: `json.dumps(value, ensure_ascii=..., indent=..., separators=...,
/// sort_keys=...)`, `ensure_ascii` false unless asked. minijinja's own escapes HTML characters
/// and spaces differently.
pub(super) fn tojson(value: JValue, kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Python indents by any width; a template asking for a million spaces a level is building
    // a huge string, not JSON for a model.
    if indent.is_some_and(|i| i > 64) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: an indent above 64 is not supported",
        ));
    }
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
