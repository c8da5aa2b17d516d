//! Reasoning kept apart from the answer. Models that think before they answer mark the two in
//! what they generate: `<think>` … `</think>` (Qwen3, DeepSeek-R1, GLM, ...) or OpenAI's harmony
//! messages on channels (gpt-oss: `<|channel|>analysis<|message|>…<|end|>` then the `final`
//! channel, and tool calls addressed `to=functions.NAME`). The format is read from the
//! tokenizer's special tokens, and the generated ids are split at those ids, never by matching
//! text, so text that merely spells a marker is left as it is.

use crate::error::Result;
use crate::tokenizer::{TextStream, Tokenizer};

/// Which part of the output a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Thinking before the answer: a `<think>` block, harmony's `analysis` channel.
    Reasoning,
    /// What the user is shown: all the text of a model that marks nothing, the text after
    /// `</think>`, harmony's `final` channel (and `commentary` addressed to no tool).
    Answer,
    /// The arguments of a tool call (a harmony message addressed to a tool).
    ToolCall,
}

/// A call the model asked for (harmony: `<|start|>assistant to=functions.NAME …<|message|>ARGS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The tool, without harmony's `functions.` namespace (`browser.search` keeps its own).
    pub name: String,
    /// As generated: usually JSON, in the content type the header names.
    pub arguments: String,
}

/// How a checkpoint's output marks its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// No markers: all of it is the answer.
    Plain,
    /// `<think>` … `</think>`, each a single token.
    ThinkTags {
        open: u32,
        close: u32,
    },
    Harmony(HarmonyIds),
}

/// The ids of harmony's special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarmonyIds {
    start: u32,
    channel: u32,
    message: u32,
    end: u32,
    constrain: Option<u32>,
    /// End of the final answer.
    ret: Option<u32>,
    /// End of a tool call.
    call: Option<u32>,
}

impl OutputFormat {
    /// The format `tokenizer`'s special tokens spell: harmony when it has harmony's
    /// `<|start|>`, `<|channel|>`, `<|message|>` and `<|end|>`, think tags when `<think>` and
    /// `</think>` are tokens of their own, else plain.
    pub fn of(tokenizer: &Tokenizer) -> OutputFormat {
        let id = |text: &str| tokenizer.token_to_id(text);
        let harmony = (|| {
            Some(HarmonyIds {
                start: id("<|start|>")?,
                channel: id("<|channel|>")?,
                message: id("<|message|>")?,
                end: id("<|end|>")?,
                constrain: id("<|constrain|>"),
                ret: id("<|return|>"),
                call: id("<|call|>"),
            })
        })();
        if let Some(ids) = harmony {
            return OutputFormat::Harmony(ids);
        }
        match (id("<think>"), id("</think>")) {
            (Some(open), Some(close)) => OutputFormat::ThinkTags { open, close },
            _ => OutputFormat::Plain,
        }
    }

    /// Ids that end a turn in this format, stop ids whatever the checkpoint's generation
    /// config lists: harmony's `<|return|>` and `<|call|>` (after a call the tool speaks next).
    pub fn stop_ids(&self) -> Vec<u32> {
        match self {
            OutputFormat::Harmony(h) => h.ret.into_iter().chain(h.call).collect(),
            _ => Vec::new(),
        }
    }

    /// The message field chat templates read an earlier turn's reasoning from: `thinking` in
    /// gpt-oss's template, `reasoning_content` in Qwen3's and most others.
    pub fn reasoning_field(&self) -> &'static str {
        match self {
            OutputFormat::Harmony(_) => "thinking",
            _ => "reasoning_content",
        }
    }
}

impl HarmonyIds {
    /// Whether the part after `id` is known from the ids from `id` on: `<|start|>` or a
    /// message's end (`<|message|>` needs the header before it).
    fn is_boundary(&self, id: u32) -> bool {
        [self.start, self.end].contains(&id) || self.ret == Some(id) || self.call == Some(id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Text(Part),
    /// Harmony: between `<|start|>` and `<|message|>`, reading who speaks to whom on which
    /// channel.
    Header,
}

/// Streams generated ids into text, each piece tagged with its part; marker ids yield no text.
pub struct Splitter<'t> {
    format: OutputFormat,
    stream: TextStream<'t>,
    state: State,
    /// The header being read (harmony), special tokens written out.
    header: String,
    /// Newlines held back at the edge of a think-tag part: they are dropped there, as chat
    /// templates strip them, and released when more text of the same part follows.
    held: String,
    /// Whether a think tag opened the current part: then its edges' newlines are trimmed.
    /// Text no marker opened is left as it is.
    trim_edges: bool,
    /// Whether the current part has shown text since its marker.
    shown: bool,
    tool_calls: Vec<ToolCall>,
}

impl<'t> Splitter<'t> {
    /// A splitter for what follows `prompt`. With think tags, the output opens in reasoning
    /// when the prompt ends in `<think>` (and whitespace), as the templates of thinking models
    /// end it; a `<think>` anywhere else (a message's text, an earlier turn) says nothing about
    /// what follows. With harmony, the output continues the prompt's last message or header
    /// (`<|start|>assistant` leaves a header to finish).
    pub fn new(tokenizer: &'t Tokenizer, prompt: &[u32]) -> Result<Splitter<'t>> {
        let format = OutputFormat::of(tokenizer);
        let mut splitter = Splitter {
            format,
            ..Splitter::plain(tokenizer)
        };
        match format {
            OutputFormat::Plain => {}
            OutputFormat::ThinkTags { open, .. } => {
                let blank = |id: &u32| tokenizer.decode(&[*id]).is_ok_and(|t| t.trim().is_empty());
                if prompt.iter().rev().find(|id| !blank(id)) == Some(&open) {
                    splitter.enter(State::Text(Part::Reasoning));
                }
            }
            OutputFormat::Harmony(h) => {
                if let Some(last) = prompt.iter().rposition(|&id| h.is_boundary(id)) {
                    for &id in &prompt[last..] {
                        splitter.push(id)?;
                    }
                    splitter.stream = tokenizer.stream();
                    splitter.tool_calls.clear();
                }
            }
        }
        Ok(splitter)
    }

    /// A splitter that reads no format: every id's text is answer, as it comes (a text
    /// completion's raw continuation).
    pub fn plain(tokenizer: &'t Tokenizer) -> Splitter<'t> {
        Splitter {
            format: OutputFormat::Plain,
            stream: tokenizer.stream(),
            state: State::Text(Part::Answer),
            header: String::new(),
            held: String::new(),
            trim_edges: false,
            shown: false,
            tool_calls: Vec::new(),
        }
    }

    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// The text `id` completes, with its part; `None` for a marker, a header, or the first
    /// bytes of a character.
    pub fn push(&mut self, id: u32) -> Result<Option<(Part, String)>> {
        if self.switch(id) {
            return Ok(None);
        }
        let Some(piece) = self.stream.push(id)? else {
            return Ok(None);
        };
        match self.state {
            State::Header => {
                self.header.push_str(&piece);
                Ok(None)
            }
            State::Text(part) => {
                let piece = self.trim(piece);
                if piece.is_empty() {
                    return Ok(None);
                }
                if let (Part::ToolCall, Some(call)) = (part, self.tool_calls.last_mut()) {
                    call.arguments.push_str(&piece);
                }
                Ok(Some((part, piece)))
            }
        }
    }

    /// The tool calls read so far.
    pub fn tool_calls(&self) -> &[ToolCall] {
        &self.tool_calls
    }

    pub fn into_tool_calls(self) -> Vec<ToolCall> {
        self.tool_calls
    }

    /// Acts on a marker id; false for any other id.
    fn switch(&mut self, id: u32) -> bool {
        match self.format {
            OutputFormat::Plain => false,
            OutputFormat::ThinkTags { open, close } => {
                let part = match id {
                    _ if id == open => Part::Reasoning,
                    _ if id == close => Part::Answer,
                    _ => return false,
                };
                self.enter(State::Text(part));
                true
            }
            OutputFormat::Harmony(h) => {
                if id == h.start {
                    self.enter(State::Header);
                    self.header.clear();
                } else if self.state == State::Header && id == h.message {
                    let (part, recipient) = read_header(&self.header);
                    if let Some(to) = recipient.filter(|_| part == Part::ToolCall) {
                        let name = to.strip_prefix("functions.").unwrap_or(&to);
                        self.tool_calls.push(ToolCall {
                            name: name.to_string(),
                            arguments: String::new(),
                        });
                    }
                    self.enter(State::Text(part));
                } else if self.state == State::Header && id == h.channel {
                    self.header.push_str(CHANNEL);
                } else if self.state == State::Header && h.constrain == Some(id) {
                    self.header.push_str(" <|constrain|>");
                } else if id == h.end || h.ret == Some(id) || h.call == Some(id) {
                    // Text outside any message is shown as the answer.
                    self.enter(State::Text(Part::Answer));
                } else {
                    return false;
                }
                true
            }
        }
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.held.clear();
        self.trim_edges = matches!(self.format, OutputFormat::ThinkTags { .. });
        self.shown = false;
    }

    /// Parts a think tag opened: drops the newlines that open the part, and holds back those
    /// that may close it (`<think>\nWhy.\n</think>\n\nBecause.` reads "Why." then "Because.").
    fn trim(&mut self, piece: String) -> String {
        if !self.trim_edges {
            return piece;
        }
        let piece = if self.shown {
            piece
        } else {
            piece.trim_start_matches('\n').to_string()
        };
        if piece.is_empty() {
            return piece;
        }
        let body = piece.trim_end_matches('\n');
        if body.is_empty() {
            self.held.push_str(&piece);
            return String::new();
        }
        let out = std::mem::take(&mut self.held) + body;
        self.held.push_str(&piece[body.len()..]);
        self.shown = true;
        out
    }
}

const CHANNEL: &str = "<|channel|>";

/// The part a harmony header opens, and whom the message is addressed to. Headers read
/// `assistant<|channel|>analysis`, `assistant<|channel|>commentary to=functions.f <|constrain|>json`
/// or `assistant to=functions.f<|channel|>commentary json`.
fn read_header(header: &str) -> (Part, Option<String>) {
    let word = |after: &str| -> Option<String> {
        let at = header.find(after)? + after.len();
        let word: String = header[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '<')
            .collect();
        Some(word).filter(|w| !w.is_empty())
    };
    let recipient = word("to=");
    let channel = word(CHANNEL);
    let part = match (&recipient, channel.as_deref()) {
        (Some(to), _) if to != "assistant" && to != "user" => Part::ToolCall,
        (_, Some("analysis")) => Part::Reasoning,
        _ => Part::Answer,
    };
    (part, recipient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tokenizer(style: &str) -> Tokenizer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat");
        Tokenizer::load(&dir.join(style)).unwrap()
    }

    /// The parts of `output` generated after `prompt`, each part's pieces joined, in order of
    /// appearance; and the tool calls.
    fn split(tok: &Tokenizer, prompt: &str, output: &str) -> (Vec<(Part, String)>, Vec<ToolCall>) {
        let prompt = tok.encode_with(prompt, false).unwrap();
        let mut splitter = Splitter::new(tok, &prompt).unwrap();
        let mut parts: Vec<(Part, String)> = Vec::new();
        for id in tok.encode_with(output, false).unwrap() {
            if let Some((part, piece)) = splitter.push(id).unwrap() {
                match parts.last_mut() {
                    Some((last, text)) if *last == part => text.push_str(&piece),
                    _ => parts.push((part, piece)),
                }
            }
        }
        (parts, splitter.into_tool_calls())
    }

    fn parts(list: &[(Part, &str)]) -> Vec<(Part, String)> {
        list.iter().map(|(p, t)| (*p, t.to_string())).collect()
    }

    const HARMONY_PROMPT: &str =
        "<|start|>user<|message|>Good morrow, who art thou?<|end|><|start|>assistant";

    #[test]
    fn harmony_analysis_is_reasoning_and_final_is_the_answer() {
        let tok = tokenizer("harmony");
        assert!(matches!(OutputFormat::of(&tok), OutputFormat::Harmony(_)));
        let (got, calls) = split(
            &tok,
            HARMONY_PROMPT,
            "<|channel|>analysis<|message|>A greeting; answer in kind.<|end|>\
             <|start|>assistant<|channel|>final<|message|>Hamlet, at your service.<|return|>",
        );
        let want = [
            (Part::Reasoning, "A greeting; answer in kind."),
            (Part::Answer, "Hamlet, at your service."),
        ];
        assert_eq!(got, parts(&want));
        assert!(calls.is_empty());
    }

    #[test]
    fn harmony_tool_calls_are_read_with_either_header_order() {
        let tok = tokenizer("harmony");
        for call in [
            "<|start|>assistant<|channel|>commentary to=functions.tide_table <|constrain|>json\
             <|message|>{\"port\": \"Dover\"}<|call|>",
            "<|start|>assistant to=functions.tide_table<|channel|>commentary json\
             <|message|>{\"port\": \"Dover\"}<|call|>",
        ] {
            let output = format!("<|channel|>analysis<|message|>Look it up.<|end|>{call}");
            let (got, calls) = split(&tok, HARMONY_PROMPT, &output);
            let want = [
                (Part::Reasoning, "Look it up."),
                (Part::ToolCall, "{\"port\": \"Dover\"}"),
            ];
            assert_eq!(got, parts(&want), "{call}");
            assert_eq!(
                calls,
                [ToolCall {
                    name: "tide_table".into(),
                    arguments: "{\"port\": \"Dover\"}".into()
                }]
            );
        }
        // A preamble on the commentary channel, addressed to no tool, is shown.
        let (got, _) = split(
            &tok,
            HARMONY_PROMPT,
            "<|channel|>commentary<|message|>Checking the tables.<|end|>",
        );
        assert_eq!(got, parts(&[(Part::Answer, "Checking the tables.")]));
    }

    #[test]
    fn the_prompt_decides_where_harmony_output_starts() {
        let tok = tokenizer("harmony");
        // A prompt that already opened the analysis channel: the continuation is reasoning.
        let prompt = format!("{HARMONY_PROMPT}<|channel|>analysis<|message|>");
        let (got, _) = split(&tok, &prompt, "Think.<|end|>");
        assert_eq!(got, parts(&[(Part::Reasoning, "Think.")]));
        // Plain text with no markers at all is the answer, newlines and all.
        let (got, _) = split(&tok, "ROMEO:", "\nBut soft!\n");
        assert_eq!(got, parts(&[(Part::Answer, "\nBut soft!\n")]));
    }

    #[test]
    fn think_tags_split_reasoning_from_the_answer_and_drop_their_newlines() {
        let tok = tokenizer("chatml");
        assert!(matches!(
            OutputFormat::of(&tok),
            OutputFormat::ThinkTags { .. }
        ));
        let answer = "<think>\nAdd them.\n\nThen check.\n</think>\n\nFour.\n";
        let want = [
            (Part::Reasoning, "Add them.\n\nThen check."),
            (Part::Answer, "Four."),
        ];
        let (got, _) = split(&tok, "<|im_start|>assistant\n", answer);
        assert_eq!(got, parts(&want));
        // A template that opens the think block in the prompt (Qwen3 thinking models).
        let (got, _) = split(
            &tok,
            "<|im_start|>assistant\n<think>\n",
            &answer["<think>\n".len()..],
        );
        assert_eq!(got, parts(&want));
        // An earlier turn's closed block leaves the answer open.
        let (got, _) = split(
            &tok,
            "<think>\nOld.\n</think>\n\nOld answer.<|im_end|>\n<|im_start|>assistant\n",
            "Hi",
        );
        assert_eq!(got, parts(&[(Part::Answer, "Hi")]));
        // A <think> in the user's words does not open the reply in reasoning.
        let (got, _) = split(
            &tok,
            "<|im_start|>user\nWrite <think><|im_end|>\n<|im_start|>assistant\n",
            "Done.",
        );
        assert_eq!(got, parts(&[(Part::Answer, "Done.")]));
    }

    #[test]
    fn text_no_think_tag_opened_keeps_its_newlines() {
        let tok = tokenizer("chatml");
        let (got, _) = split(&tok, "def f():", "\n    return 1\n\n");
        assert_eq!(got, parts(&[(Part::Answer, "\n    return 1\n\n")]));
    }

    #[test]
    fn a_tokenizer_without_markers_is_plain() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
        let tok = Tokenizer::load(&dir.join("qwen2")).unwrap();
        assert_eq!(OutputFormat::of(&tok), OutputFormat::Plain);
        assert!(OutputFormat::Plain.stop_ids().is_empty());
    }

    #[test]
    fn harmony_headers_are_read_as_openai_writes_them() {
        let cases = [
            ("assistant<|channel|>analysis", Part::Reasoning, None),
            ("assistant<|channel|>final", Part::Answer, None),
            ("assistant<|channel|>commentary", Part::Answer, None),
            (
                "assistant<|channel|>commentary to=functions.f <|constrain|>json",
                Part::ToolCall,
                Some("functions.f"),
            ),
            (
                "assistant to=python<|channel|>analysis",
                Part::ToolCall,
                Some("python"),
            ),
            (
                "functions.f to=assistant<|channel|>commentary",
                Part::Answer,
                Some("assistant"),
            ),
            ("assistant", Part::Answer, None),
        ];
        for (header, part, to) in cases {
            assert_eq!(
                read_header(header),
                (part, to.map(String::from)),
                "{header}"
            );
        }
    }
}
