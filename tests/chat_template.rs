//! Chat templates against HF transformers: for seven template styles (ChatML, [INST], tulu,
//! Granite, DeepSeek, and the published templates of gpt-oss (harmony) and Gemma 4) and every
//! conversation of tools/make_chat_fixtures.py, the rendered text and its ids equal HF's
//! `apply_chat_template`, and where HF refuses a conversation so do we.

use std::path::PathBuf;

use moe_runtime::chat_template::{ChatTemplate, Message, RenderOptions};
use moe_runtime::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    /// The instant `strftime_now` formats, ISO 8601.
    now: String,
    cases: Vec<Case>,
    plain: Vec<Plain>,
}

#[derive(Deserialize)]
struct Case {
    style: String,
    conversation: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    variables: serde_json::Map<String, serde_json::Value>,
    text: Option<String>,
    tokens: Option<Vec<u32>>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Plain {
    style: String,
    text: String,
    tokens: Vec<u32>,
}

fn chat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
}

fn cases() -> Cases {
    let text = std::fs::read_to_string(chat_dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn templates_render_as_hf_renders_them() {
    let cases = cases();
    let styles = [
        "chatml", "inst", "tulu", "granite", "deepseek", "harmony", "gemma4",
    ];
    for style in styles {
        assert!(
            cases.cases.iter().any(|c| c.style == style),
            "no {style} cases"
        );
    }
    let now = chrono::NaiveDateTime::parse_from_str(&cases.now, "%Y-%m-%dT%H:%M:%S").unwrap();
    let mut checked = 0;
    for case in &cases.cases {
        let tok = Tokenizer::load(&chat_dir().join(&case.style)).unwrap();
        let opts = RenderOptions {
            add_generation_prompt: case.add_generation_prompt,
            tools: case.tools.clone(),
            variables: case.variables.clone(),
            now: Some(now),
            ..RenderOptions::default()
        };
        let what = format!(
            "{} / {} (generation prompt {}, tools {})",
            case.style,
            case.conversation,
            case.add_generation_prompt,
            case.tools.is_some()
        );
        let got = tok.apply_chat_template(&case.messages, &opts);
        match (&case.error, got) {
            (Some(hf_error), Err(e)) => assert!(
                e.to_string().contains(hf_error.as_str()),
                "{what}: HF says `{hf_error}`, we say `{e}`"
            ),
            (Some(hf_error), Ok(p)) => panic!("{what}: HF refuses ({hf_error}), we render {p:?}"),
            (None, Err(e)) => panic!("{what}: {e}"),
            (None, Ok(p)) => {
                assert_eq!(Some(&p.text), case.text.as_ref(), "{what}: text");
                assert_eq!(Some(&p.tokens), case.tokens.as_ref(), "{what}: ids");
            }
        }
        checked += 1;
    }
    assert!(checked >= 100, "only {checked} cases");
}

#[test]
fn plain_prompts_encode_as_hf_encodes_them() {
    // Llama-style tokenizer.json files prepend bos in their post-processor; HF's
    // `tokenizer(text)` applies it, and so does `encode`.
    for case in cases().plain {
        let tok = Tokenizer::load(&chat_dir().join(&case.style)).unwrap();
        assert_eq!(
            tok.encode(&case.text).unwrap(),
            case.tokens,
            "{}",
            case.style
        );
    }
}

fn folder_with_only_a_tokenizer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        chat_dir().join("chatml/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

#[test]
fn a_checkpoint_without_a_template_says_so() {
    let dir = folder_with_only_a_tokenizer();
    let tok = Tokenizer::load(dir.path()).unwrap();
    assert!(tok.chat_template().is_none());
    let err = tok
        .apply_chat_template(&[Message::user("Hi")], &RenderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no chat template"), "{err}");
}

#[test]
fn broken_templates_fail_at_load_naming_the_file() {
    let dir = folder_with_only_a_tokenizer();
    let write = |config: serde_json::Value| {
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap()
    };
    write(serde_json::json!({"chat_template": "{% for m in messages %}{{ m.content }}"}));
    let err = Tokenizer::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("chat template"),
        "{err}"
    );

    write(serde_json::json!({"chat_template": [{"name": "tool_use", "template": "x"}]}));
    let tok = Tokenizer::load(dir.path()).unwrap();
    let err = tok
        .apply_chat_template(&[Message::user("Hi")], &RenderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("default"), "{err}");

    write(serde_json::json!({"chat_template": 7}));
    let err = Tokenizer::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("`chat_template`"), "{err}");
}

#[test]
fn the_bundled_model_speaks_chatml() {
    let dir = PathBuf::from(moe_runtime::BUNDLED_MODEL);
    let tok = Tokenizer::load(&dir).unwrap();
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    let prompt = tok
        .apply_chat_template(&[Message::user("Speak, ghost!")], &opts)
        .unwrap();
    assert_eq!(
        prompt.text,
        "<|im_start|>user\nSpeak, ghost!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(prompt.tokens[0], tok.token_to_id("<|im_start|>").unwrap());
}

/// tools/make_chat_fixtures.py --real-templates: the templates published models ship (llama.cpp
/// keeps copies for its own tests), over plain, multi-turn, tool and reasoning conversations.
#[derive(Deserialize)]
struct RealCases {
    /// The instant `strftime_now` formats, ISO 8601.
    now: String,
    cases: Vec<RealCase>,
}

#[derive(Deserialize)]
struct RealCase {
    template: String,
    conversation: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    variables: serde_json::Map<String, serde_json::Value>,
    text: Option<String>,
    tokens: Option<Vec<u32>>,
    error: Option<String>,
}

/// Renderings known to differ from HF's, and why. Each must still differ (a fix shows here).
const KNOWN_DIFFERENCES: [(&str, &str, &str); 3] = [
    (FUNCTIONARY, "tools_offered", MARKUP),
    (FUNCTIONARY, "tool_call", MARKUP),
    (FUNCTIONARY, "null_fields", MARKUP),
];
const FUNCTIONARY: &str = "meetkai-functionary-medium-v3.1.jinja";
const MARKUP: &str = "Jinja2's `'text'|safe + value` is a Markup that HTML-escapes `value` \
                      (quotes become &#34;); minijinja's `+` joins the strings as they are";

#[test]
fn published_templates_render_as_hf_renders_them() {
    let dir = chat_dir().join("real");
    let cases: RealCases =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let now = chrono::NaiveDateTime::parse_from_str(&cases.now, "%Y-%m-%dT%H:%M:%S").unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let mut failures = Vec::new();
    for case in &cases.cases {
        let path = dir.join(&case.template);
        let what = format!("{} / {}", case.template, case.conversation);
        let source = std::fs::read_to_string(&path).unwrap();
        let template = match ChatTemplate::from_source(&path, &source, &config) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{what}: does not compile: {e}"));
                continue;
            }
        };
        // `documents` is HF's named argument; the rest are template variables.
        let mut variables = case.variables.clone();
        let documents = variables.remove("documents").map(|d| match d {
            serde_json::Value::Array(list) => list,
            other => panic!("{what}: documents {other}"),
        });
        let opts = RenderOptions {
            add_generation_prompt: case.add_generation_prompt,
            tools: case.tools.clone(),
            variables,
            documents,
            now: Some(now),
        };
        match (&case.error, template.render(&case.messages, &opts)) {
            (Some(_), Err(_)) => {}
            (Some(hf), Ok(text)) => {
                failures.push(format!("{what}: HF refuses ({hf}), we render {text:?}"))
            }
            (None, Err(e)) => failures.push(format!("{what}: {e}")),
            (None, Ok(text)) if Some(&text) != case.text.as_ref() => {
                let want = case.text.as_deref().unwrap_or_default();
                let at = text
                    .chars()
                    .zip(want.chars())
                    .take_while(|(a, b)| a == b)
                    .count();
                let from = at.saturating_sub(40);
                let excerpt = |s: &str| s.chars().skip(from).take(100).collect::<String>();
                failures.push(format!(
                    "{what}: text differs at char {at}:\n  ours {:?}\n  HF   {:?}",
                    excerpt(&text),
                    excerpt(want)
                ));
            }
            (None, Ok(text)) => {
                let ids = tok.encode_with(&text, false).unwrap();
                if Some(&ids) != case.tokens.as_ref() {
                    failures.push(format!("{what}: same text, other ids"));
                }
            }
        }
    }
    let templates: std::collections::BTreeSet<_> =
        cases.cases.iter().map(|c| &c.template).collect();
    assert!(templates.len() >= 60, "only {} templates", templates.len());
    for (template, conversation, why) in KNOWN_DIFFERENCES {
        let prefix = format!("{template} / {conversation}:");
        let at = failures.iter().position(|f| f.starts_with(&prefix));
        let at = at.unwrap_or_else(|| panic!("{prefix} now renders as HF's ({why})"));
        failures.remove(at);
    }
    assert!(
        failures.is_empty(),
        "{} of {} renderings differ from HF's:\n{}",
        failures.len(),
        cases.cases.len(),
        failures.join("\n")
    );
}
