//! The Jinja environment HF renders chat templates in, and the `strftime_now` it provides.

use chrono::NaiveDateTime;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, StringInput, ValueOrKwargs};
use minijinja::{Environment, ErrorKind, State, Value as JValue};

use super::python::{is_generator, is_python_none, python_generators, tojson};

/// [`environment`] with `strftime_now` reading `now`.
pub(super) fn environment_at(now: NaiveDateTime) -> Environment<'static> {
    let mut env = environment();
    env.add_function("strftime_now", move |format: String| strftime(now, &format));
    env
}

/// Python's `datetime.strftime(format)` for a naive local time, as glibc formats it: chrono
/// formats each directive it shares with C; `%Z` and `%z` are empty (no zone), `%f` is
/// microseconds, the flags `-`, `_`, `0` and `^` and a width apply, and an unknown directive
/// stays as written. Never fails.
pub(super) fn strftime(now: NaiveDateTime, format: &str) -> String {
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

/// The widest padding or the largest count a template may ask of a string method or filter:
/// far past any chat template's indentation, far short of memory.
const MAX_WIDTH: i64 = 1 << 16;

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, message)
}

/// Refuses a method or filter call whose integer arguments (widths, counts) pass MAX_WIDTH.
fn bounded_widths(method: &str, args: &[JValue]) -> Result<(), minijinja::Error> {
    for arg in args {
        if let Ok(n) = i64::try_from(arg.clone()) {
            if n > MAX_WIDTH {
                return Err(invalid(format!(
                    "{method}: {n} is larger than a template may ask for ({MAX_WIDTH})"
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a printf-style format whose widths or precisions pass MAX_WIDTH.
fn bounded_format(format: &str) -> Result<(), minijinja::Error> {
    let digits = format
        .split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty());
    for run in digits {
        if run.len() > 5 || run.parse::<i64>().is_ok_and(|n| n > MAX_WIDTH) {
            return Err(invalid(format!(
                "format: a width of {run} is larger than a template may ask for ({MAX_WIDTH})"
            )));
        }
    }
    Ok(())
}

/// A Jinja environment configured as HF's (`ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True)` with loop controls and its own globals and filters), but for
/// `strftime_now` ([`environment_at`]).
pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    // Python's string methods, their widths and counts bounded (`"".ljust(10**12)` is a
    // template's way to a terabyte).
    env.set_unknown_method_callback(|state, value, method, args| {
        bounded_widths(method, args)?;
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
    // The filters that pad by a number the template gives, bounded likewise.
    env.add_filter(
        "indent",
        |value: StringInput,
         width: Option<JValue>,
         first: Option<bool>,
         blank: Option<bool>,
         kwargs: Kwargs| {
            let named = kwargs.peek::<Option<JValue>>("width")?;
            let given: Vec<JValue> = [width.clone(), named].into_iter().flatten().collect();
            bounded_widths("indent", &given)?;
            let width = width.map(|w| {
                w.as_usize()
                    .ok_or_else(|| invalid("indent: the width must be a count"))
            });
            minijinja::filters::indent(value, width.transpose()?, first, blank, kwargs)
        },
    );
    env.add_filter(
        "format",
        |state: &mut State, format: &JValue, args: Rest<ValueOrKwargs>| {
            bounded_format(format.as_str().unwrap_or_default())?;
            minijinja::filters::format(state, format, args)
        },
    );
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
