//! Unit tests of the renderer's pieces; tests/chat_template.rs checks whole templates against
//! HF's renders.

use super::*;

fn render_str(source: &str, ctx: Value) -> String {
    environment()
        .render_str(source, JValue::from(Serde(&ctx)))
        .unwrap()
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let ctx = serde_json::json!({"v": {"b": [1, 2.5, "it's <é>"], "a": {}, "c": [], "d": null}});
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
    let now = NaiveDateTime::parse_from_str("2026-07-04 09:05:03", "%Y-%m-%d %H:%M:%S").unwrap();
    let env = environment_at(now);
    let render = |s: &str| env.render_str(s, ());
    assert_eq!(
        render("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %-d, %A %H:%M') }}").unwrap(),
        "2026-07-04|04 Jul 2026|July 4, Saturday 09:05"
    );
    // As Python (glibc) writes them: unknown directives as written, no zone for a naive
    // time, microseconds, flags and widths.
    assert_eq!(
        render("{{ strftime_now('%Q|100%|%Z%z|%f|%^a|%10d|%_d|%Od|%e|%j|%p %I|%y|%%') }}").unwrap(),
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

/// A hostile template's work and output are bounded: each attempt is one error naming the
/// template and the limit, within the fuel's time.
#[test]
fn hostile_templates_stop_at_the_limits() {
    use super::{ChatTemplate, Message, RenderOptions};
    let cases = [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "instructions",
        ),
        (
            "{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}",
            "bytes",
        ),
        ("{{ 'x' * 100000000 }}{{ 'x' * 100000000 }}", "bytes"),
        ("{{ 'a' | indent(100000000) }}", "indent"),
        ("{{ 'a' | indent(width=100000000) }}", "indent"),
        ("{{ '%99999999s' | format('a') }}", "format"),
        ("{{ messages | tojson(indent=100000000) }}", "indent"),
        ("{{ 'a'.ljust(1000000000) }}", "ljust"),
        ("{{ 'a'.center(1000000000) }}", "center"),
        ("{% if false %}x{% endif %}", "nothing"),
    ];
    let limits = crate::Limits {
        max_rendered_bytes: 150_000_000,
        ..crate::Limits::default()
    };
    crate::Limits::set(limits);
    for (source, what) in cases {
        let path = std::path::Path::new("tokenizer_config.json");
        let t = ChatTemplate::from_source(path, source, &serde_json::json!({})).unwrap();
        let started = std::time::Instant::now();
        let e = t
            .render(&[Message::new("user", "hi")], &RenderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(what) && e.contains("tokenizer_config.json"),
            "{source}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            started.elapsed().as_secs() < 30,
            "{source}: {:?}",
            started.elapsed()
        );
    }
    crate::Limits::set(crate::Limits::default());
}
