//! A conversation with a model: messages kept in order, each turn rendered through the chat
//! template, and the keys and values of earlier turns reused rather than computed again.

use serde_json::{json, Value};

use crate::chat_template::{Message, RenderOptions};
use crate::error::Result;
use crate::generate::{Flow, GenerateOptions};
use crate::layers::{Cache, Model};
use crate::reasoning::{OutputFormat, Part};
use crate::text::{generate_text, TextGeneration};
use crate::tokenizer::Tokenizer;

/// A multi-turn chat over one model and its tokenizer (which must have a chat template).
pub struct Chat<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    pub options: GenerateOptions,
    pub stop_strings: Vec<String>,
    /// What the template sees besides the messages: `tools`, variables such as
    /// `reasoning_effort` or `enable_thinking`, documents. Each turn adds the generation prompt.
    pub render: RenderOptions,
    system: Option<String>,
    messages: Vec<Message>,
    /// How the model marks reasoning and tool calls, and so how answers go into the history.
    format: OutputFormat,
    cache: Cache,
    /// The ids whose keys and values `cache` holds.
    cached: Vec<u32>,
}

impl<'a> Chat<'a> {
    pub fn new(model: &'a Model, tokenizer: &'a Tokenizer, options: GenerateOptions) -> Self {
        Chat {
            model,
            tokenizer,
            options,
            stop_strings: Vec::new(),
            render: RenderOptions::default(),
            system: None,
            messages: Vec::new(),
            format: OutputFormat::of(tokenizer),
            cache: model.new_cache(),
            cached: Vec::new(),
        }
    }

    /// Starts every conversation with this system message (kept across [`Chat::reset`]).
    pub fn with_system(mut self, text: impl Into<String>) -> Self {
        self.system = Some(text.into());
        self.reset();
        self
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Forgets the conversation (but not the system message).
    pub fn reset(&mut self) {
        self.messages = self.system.iter().map(Message::system).collect();
        self.cache.reset();
        self.cached.clear();
    }

    /// Adds the user's message, generates the answer (streamed to `on_text` with the part each
    /// piece belongs to: reasoning, answer or tool call) and adds it to the conversation. Fails,
    /// leaving the conversation as it was, if the template refuses the conversation or the
    /// model fails.
    pub fn send(
        &mut self,
        user: &str,
        on_text: impl FnMut(Part, &str) -> Flow,
    ) -> Result<TextGeneration> {
        self.send_message(Message::user(user), on_text)
    }

    /// As [`Chat::send`] for any message: a tool's result (`role: tool`) after the model asked
    /// for a call, for one.
    pub fn send_message(
        &mut self,
        message: Message,
        on_text: impl FnMut(Part, &str) -> Flow,
    ) -> Result<TextGeneration> {
        self.messages.push(message);
        let answer = self.answer(on_text);
        match &answer {
            Ok(answer) => self.messages.push(history_message(self.format, answer)),
            Err(_) => {
                self.messages.pop();
                self.cache.reset();
                self.cached.clear();
            }
        }
        answer
    }

    fn answer(&mut self, on_text: impl FnMut(Part, &str) -> Flow) -> Result<TextGeneration> {
        let opts = RenderOptions {
            add_generation_prompt: true,
            ..self.render.clone()
        };
        let prompt = self
            .tokenizer
            .apply_chat_template(&self.messages, &opts)?
            .tokens;
        // Earlier turns usually render to the same ids again: keep their keys and values.
        let kept = self.cache.resume(&self.cached, &prompt)?;
        self.cached.truncate(kept);
        let answer = generate_text(
            self.model,
            self.tokenizer,
            &mut self.cache,
            &prompt,
            &self.options,
            &self.stop_strings,
            on_text,
        )?;
        // The cache now holds the prompt and the answer but its last token (or less, when the
        // context filled up).
        self.cached = prompt;
        self.cached.extend_from_slice(&answer.generation.tokens);
        self.cached.truncate(self.cache.position());
        Ok(answer)
    }
}

/// The answer as the history keeps it: the reasoning in the field the template reads
/// (templates drop it from earlier turns, or keep it beside an unanswered tool call), tool
/// calls as OpenAI's API writes them, with JSON arguments as objects, as HF's templates
/// expect.
fn history_message(format: OutputFormat, answer: &TextGeneration) -> Message {
    let mut message = Message::assistant(answer.text.clone());
    if !answer.reasoning.is_empty() {
        let field = format.reasoning_field().to_string();
        message
            .fields
            .insert(field, answer.reasoning.clone().into());
    }
    if !answer.tool_calls.is_empty() {
        // Harmony's template refuses content beside both thinking and a call: a preamble the
        // model wrote on the commentary channel was shown, and is left out.
        let both = matches!(format, OutputFormat::Harmony(_)) && !answer.reasoning.is_empty();
        if answer.text.is_empty() || both {
            message.fields.remove("content");
        }
        let calls: Vec<Value> = answer
            .tool_calls
            .iter()
            .map(|call| {
                let arguments = serde_json::from_str::<Value>(&call.arguments)
                    .unwrap_or_else(|_| call.arguments.clone().into());
                json!({"type": "function",
                       "function": {"name": call.name, "arguments": arguments}})
            })
            .collect();
        message.fields.insert("tool_calls".into(), calls.into());
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Generation, Stats, StopReason};
    use crate::reasoning::ToolCall;
    use serde::Deserialize;
    use std::path::{Path, PathBuf};

    fn answer(text: &str, reasoning: &str, tool_calls: Vec<ToolCall>) -> TextGeneration {
        TextGeneration {
            text: text.into(),
            reasoning: reasoning.into(),
            tool_calls,
            generation: Generation {
                tokens: Vec::new(),
                stats: Stats::default(),
                stop: StopReason::StopToken,
            },
        }
    }

    #[derive(Deserialize)]
    struct Case {
        style: String,
        conversation: String,
        messages: Vec<Message>,
        tools: Option<Vec<Value>>,
        #[serde(default)]
        variables: serde_json::Map<String, Value>,
        text: Option<String>,
    }

    fn chat_fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
    }

    /// HF's rendering of the harmony conversation `name` (tools/make_chat_fixtures.py), with
    /// its assistant message at `at` replaced by ours for `answer`, as we render it.
    fn ours_and_hf(name: &str, at: usize, answer: &TextGeneration) -> (String, String) {
        let file = std::fs::read_to_string(chat_fixtures().join("cases.json")).unwrap();
        let file: Value = serde_json::from_str(&file).unwrap();
        let cases: Vec<Case> = serde_json::from_value(file["cases"].clone()).unwrap();
        let mut case = cases
            .into_iter()
            .find(|c| c.style == "harmony" && c.conversation == name)
            .unwrap();
        let now = file["now"].as_str().unwrap();
        let tok = Tokenizer::load(&chat_fixtures().join("harmony")).unwrap();
        assert_eq!(case.messages[at].role, "assistant");
        case.messages[at] = history_message(OutputFormat::of(&tok), answer);
        let opts = RenderOptions {
            add_generation_prompt: true,
            tools: case.tools,
            variables: case.variables,
            now: Some(chrono::NaiveDateTime::parse_from_str(now, "%Y-%m-%dT%H:%M:%S").unwrap()),
            ..RenderOptions::default()
        };
        let ours = tok.apply_chat_template(&case.messages, &opts).unwrap().text;
        (ours, case.text.unwrap())
    }

    /// gpt-oss's answers enter the history as its template reads them: the conversations HF
    /// rendered with hand-written assistant messages render the same with ours in their place.
    #[test]
    fn harmony_answers_enter_the_history_as_gpt_oss_template_reads_them() {
        // Reasoning beside a tool call not yet answered is kept; arguments go in as an object.
        let call = ToolCall {
            name: "tide_table".into(),
            arguments: r#"{"port": "Dover", "days": 2}"#.into(),
        };
        let asked = answer("", "The tide table has it.", vec![call]);
        let (ours, hf) = ours_and_hf("reasoning_beside_a_tool_call", 2, &asked);
        assert_eq!(ours, hf);
        // With a preamble on the commentary channel too, which the template would refuse
        // beside the thinking.
        let mut with_preamble = asked.clone();
        with_preamble.text = "Checking the tables.".into();
        let (ours, hf) = ours_and_hf("reasoning_beside_a_tool_call", 2, &with_preamble);
        assert_eq!(ours, hf);
        // An earlier turn's reasoning is dropped.
        let (ours, hf) = ours_and_hf(
            "reasoning_dropped",
            1,
            &answer("Four.", "Add them.", vec![]),
        );
        assert_eq!(ours, hf);
    }

    #[test]
    fn think_tag_reasoning_goes_where_qwen_templates_read_it() {
        let tok = Tokenizer::load(&chat_fixtures().join("chatml")).unwrap();
        let message = history_message(OutputFormat::of(&tok), &answer("Four.", "Add.", vec![]));
        assert_eq!(message.content(), Some("Four."));
        assert_eq!(message.fields["reasoning_content"], "Add.");
        // Arguments that are not JSON stay text.
        let call = ToolCall {
            name: "f".into(),
            arguments: "not json".into(),
        };
        let message = history_message(OutputFormat::Plain, &answer("", "", vec![call]));
        assert!(message.content().is_none());
        assert_eq!(
            message.fields["tool_calls"][0]["function"]["arguments"],
            "not json"
        );
    }
}
