//! Generation as text: ids streamed through the tokenizer, end-of-sequence ids kept out of the
//! text, reasoning kept apart from the answer, and stop strings that end generation without
//! ever being shown.

use crate::error::{Error, Result};
use crate::generate::{generate_cached, Flow, GenerateOptions, Generation, StopReason};
use crate::layers::{Cache, Model};
use crate::reasoning::{Part, Splitter, ToolCall};
use crate::tokenizer::Tokenizer;

/// A generation as text: the answer, the reasoning before it and the tool calls it asks for
/// (see [`crate::reasoning`]), without stop ids and without the stop string that ended it.
#[derive(Debug, Clone, PartialEq)]
pub struct TextGeneration {
    /// The answer: all the text of a model that marks no reasoning.
    pub text: String,
    /// The reasoning (`<think>` blocks, harmony's analysis channel); empty when there is none.
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub generation: Generation,
}

/// Generates after `prompt` (see [`generate_cached`]; `cache` may be fresh) and calls
/// `on_text` with each new piece of text and the part it belongs to, every piece valid UTF-8.
/// Text that could be the start of one of `stop_strings` is held back until it is known not to
/// be; when a stop string appears in the answer or the reasoning, generation ends and the text
/// stops right before it.
pub fn generate_text(
    model: &Model,
    tokenizer: &Tokenizer,
    cache: &mut Cache,
    prompt: &[u32],
    opts: &GenerateOptions,
    stop_strings: &[String],
    mut on_text: impl FnMut(Part, &str) -> Flow,
) -> Result<TextGeneration> {
    let mut decoder = Decoder::new(tokenizer, prompt, &opts.stop_tokens, stop_strings)?;
    let extended;
    let opts = if decoder.stop_tokens() == opts.stop_tokens.as_slice() {
        opts
    } else {
        extended = GenerateOptions {
            stop_tokens: decoder.stop_tokens().to_vec(),
            ..opts.clone()
        };
        &extended
    };
    let mut failure = None;
    let mut generation = generate_cached(model, cache, prompt, opts, |id| {
        decoder.push(id, &mut on_text).unwrap_or_else(|e| {
            failure = Some(e);
            Flow::Stop
        })
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if decoder.stopped_by_string() {
        generation.stop = StopReason::StopString;
    }
    let (text, reasoning, tool_calls) = decoder.finish(&mut on_text);
    Ok(TextGeneration {
        text,
        reasoning,
        tool_calls,
        generation,
    })
}

/// Generated ids as text, one id at a time: stop ids kept out of the text, reasoning and tool
/// calls apart from the answer, stop strings never shown. What [`generate_text`] runs on each
/// new id, and what a server runs for each sequence of its batch.
pub struct Decoder<'t> {
    splitter: Splitter<'t>,
    shown: Shown,
    /// The caller's stop ids and the output format's turn ends.
    stop_tokens: Vec<u32>,
    stopped_by_string: bool,
}

impl<'t> Decoder<'t> {
    /// For the ids generated after `prompt`, ending at any of `stop_tokens` (to which the
    /// output format's own turn ends are added: after a tool call the tool speaks, not the
    /// model) and before any of `stop_strings`.
    pub fn new(
        tokenizer: &'t Tokenizer,
        prompt: &[u32],
        stop_tokens: &[u32],
        stop_strings: &[String],
    ) -> Result<Decoder<'t>> {
        let splitter = Splitter::new(tokenizer, prompt)?;
        let mut stops = stop_tokens.to_vec();
        for id in splitter.format().stop_ids() {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
        Ok(Decoder {
            splitter,
            shown: Shown::new(stop_strings)?,
            stop_tokens: stops,
            stopped_by_string: false,
        })
    }

    /// For a raw continuation: the text as it comes, all of it answer (no reasoning or tool
    /// calls read out of it, no format's turn ends added), ending at any of `stop_tokens` and
    /// before any of `stop_strings`. What a text completion returns.
    pub fn raw(
        tokenizer: &'t Tokenizer,
        stop_tokens: &[u32],
        stop_strings: &[String],
    ) -> Result<Decoder<'t>> {
        Ok(Decoder {
            splitter: Splitter::plain(tokenizer),
            shown: Shown::new(stop_strings)?,
            stop_tokens: stop_tokens.to_vec(),
            stopped_by_string: false,
        })
    }

    /// The ids that end generation: the caller's, then the format's.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// Whether a stop string has ended the text.
    pub fn stopped_by_string(&self) -> bool {
        self.stopped_by_string
    }

    /// Takes the next generated id and hands the text it completes to `on_text`. Returns
    /// `Flow::Stop` when a stop string ended the text or `on_text` asked to stop; a stop id
    /// adds no text (the generator stops on it).
    pub fn push(&mut self, id: u32, on_text: &mut impl FnMut(Part, &str) -> Flow) -> Result<Flow> {
        if self.stop_tokens.contains(&id) {
            return Ok(Flow::Continue);
        }
        let Some((part, piece)) = self.splitter.push(id)? else {
            return Ok(Flow::Continue);
        };
        let (flow, stopped) = self.shown.push(part, &piece, on_text);
        self.stopped_by_string |= stopped;
        Ok(if stopped { Flow::Stop } else { flow })
    }

    /// Ends the text: what was held back as a possible stop string's start is shown (unless a
    /// stop string did end it). Returns the answer, the reasoning and the tool calls.
    pub fn finish(
        mut self,
        on_text: &mut impl FnMut(Part, &str) -> Flow,
    ) -> (String, String, Vec<ToolCall>) {
        if !self.stopped_by_string {
            if let Some(last) = self.shown.last {
                self.shown.release(last, on_text);
            }
        }
        (
            self.shown.answer.text,
            self.shown.reasoning.text,
            self.splitter.into_tool_calls(),
        )
    }
}

/// The answer and the reasoning, each watched for stop strings of its own (a stop string
/// never spans the two), and which part was shown last.
struct Shown {
    answer: StopStrings,
    reasoning: StopStrings,
    last: Option<Part>,
}

impl Shown {
    fn new(stop_strings: &[String]) -> Result<Shown> {
        Ok(Shown {
            answer: StopStrings::new(stop_strings)?,
            reasoning: StopStrings::new(stop_strings)?,
            last: None,
        })
    }

    fn filter(&mut self, part: Part) -> Option<&mut StopStrings> {
        match part {
            Part::Answer => Some(&mut self.answer),
            Part::Reasoning => Some(&mut self.reasoning),
            Part::ToolCall => None,
        }
    }

    /// Hands what of `piece` may be shown to `on_text`, first releasing what the part shown
    /// before held back. Returns what `on_text` said, and whether a stop string appeared.
    fn push(
        &mut self,
        part: Part,
        piece: &str,
        on_text: &mut impl FnMut(Part, &str) -> Flow,
    ) -> (Flow, bool) {
        let mut flow = Flow::Continue;
        if let Some(before) = self.last.replace(part).filter(|&p| p != part) {
            flow = self.release(before, on_text);
        }
        let (text, stopped) = match self.filter(part) {
            Some(filter) => filter.push(piece),
            None => (piece, false),
        };
        if !text.is_empty() && on_text(part, text) == Flow::Stop {
            flow = Flow::Stop;
        }
        (flow, stopped)
    }

    /// Shows what `part` held back as a possible stop string's start.
    fn release(&mut self, part: Part, on_text: &mut impl FnMut(Part, &str) -> Flow) -> Flow {
        match self.filter(part).map(StopStrings::finish) {
            Some(rest) if !rest.is_empty() => on_text(part, rest),
            _ => Flow::Continue,
        }
    }
}

/// Watches streamed text for stop strings, releasing only text that cannot be part of one.
pub(crate) struct StopStrings {
    stops: Vec<String>,
    /// All text so far; cut at the stop string once one appears.
    text: String,
    /// How much of `text` has been released.
    shown: usize,
}

impl StopStrings {
    pub(crate) fn new(stops: &[String]) -> Result<StopStrings> {
        if stops.iter().any(String::is_empty) {
            return Err(Error::Input("stop strings must not be empty".into()));
        }
        Ok(StopStrings {
            stops: stops.to_vec(),
            text: String::new(),
            shown: 0,
        })
    }

    /// Adds `piece`; returns the text that may now be shown, and whether a stop string ended it.
    pub(crate) fn push(&mut self, piece: &str) -> (&str, bool) {
        let start = self.shown;
        self.text.push_str(piece);
        // A match cannot begin in text already shown: that text was no stop string's prefix.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.text[start..].find(s.as_str()))
            .min();
        if let Some(at) = found {
            self.text.truncate(start + at);
            self.shown = self.text.len();
            return (&self.text[start..], true);
        }
        let held = self.longest_partial_stop(start);
        self.shown = self.text.len() - held;
        (&self.text[start..self.shown], false)
    }

    /// Releases what is held back; for when generation ended without a stop string.
    pub(crate) fn finish(&mut self) -> &str {
        let start = self.shown;
        self.shown = self.text.len();
        &self.text[start..]
    }

    /// The length of the longest tail of the text (after `from`) that begins some stop string.
    fn longest_partial_stop(&self, from: usize) -> usize {
        let tail = &self.text[from..];
        self.stops
            .iter()
            .flat_map(|stop| {
                // Proper prefixes only: a whole stop string would have been found.
                stop.char_indices()
                    .skip(1)
                    .map(|(end, _)| &stop[..end])
                    .filter(|prefix| tail.ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns what was shown, piece by piece, and whether a stop string hit.
    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopStrings::new(&stops).unwrap();
        let mut shown = Vec::new();
        for piece in pieces {
            let (out, stop) = f.push(piece);
            shown.push(out.to_string());
            if stop {
                return (shown, f.text.clone(), true);
            }
        }
        shown.push(f.finish().to_string());
        (shown, f.text.clone(), false)
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_never_shown() {
        let (shown, text, stopped) = run(&["\nUSER:"], &["Hello", " there\n", "US", "ER: more"]);
        assert!(stopped);
        assert_eq!(text, "Hello there");
        assert_eq!(shown, ["Hello", " there", "", ""]);
    }

    #[test]
    fn a_false_alarm_is_released_when_it_stops_matching() {
        let (_, text, stopped) = run(&["END"], &["the E", "N", "D", "X"]);
        assert!(stopped);
        assert_eq!(text, "the ");
        let (shown2, text2, stopped2) = run(&["END"], &["the E", "Nd", " of it E"]);
        assert!(!stopped2);
        assert_eq!(text2, "the ENd of it E");
        assert_eq!(shown2.concat(), text2);
        assert_eq!(shown2, ["the ", "ENd", " of it ", "E"]);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins_and_characters_stay_whole() {
        let (_, text, stopped) = run(&["b", "abc"], &["xxab", "c"]);
        assert!(stopped);
        assert_eq!(text, "xxa");
        // A multi-byte stop string: only whole-character prefixes are held back.
        let (shown, text, stopped) = run(&["—é"], &["a—", "x"]);
        assert!(!stopped);
        assert_eq!(shown, ["a", "—x", ""]);
        assert_eq!(text, "a—x");
    }

    /// Feeds `pieces` through the parts' filters; returns what `on_text` got and whether a
    /// stop string hit.
    fn shown(stops: &[&str], pieces: &[(Part, &str)]) -> (Vec<(Part, String)>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut shown = Shown::new(&stops).unwrap();
        let mut got = Vec::new();
        let mut on_text = |part, text: &str| {
            got.push((part, text.to_string()));
            Flow::Continue
        };
        for &(part, piece) in pieces {
            if shown.push(part, piece, &mut on_text).1 {
                return (got, true);
            }
        }
        if let Some(last) = shown.last {
            shown.release(last, &mut on_text);
        }
        (got, false)
    }

    #[test]
    fn each_part_has_its_stop_strings_and_held_text_is_shown_before_the_next_part() {
        use Part::*;
        let (got, stopped) = shown(
            &["END"],
            &[
                (Reasoning, "Think E"),
                (Answer, "Fine"),
                (ToolCall, "{END}"),
            ],
        );
        assert!(!stopped);
        let want = [
            (Reasoning, "Think "),
            (Reasoning, "E"),
            (Answer, "Fine"),
            (ToolCall, "{END}"),
        ];
        let want: Vec<_> = want.iter().map(|(p, t)| (*p, t.to_string())).collect();
        assert_eq!(got, want, "tool calls are never cut");
        // A stop string in the reasoning ends it too.
        let (got, stopped) = shown(&["END"], &[(Reasoning, "xEN"), (Reasoning, "Dy")]);
        assert!(stopped);
        assert_eq!(got, [(Reasoning, "x".to_string())]);
    }

    #[test]
    fn empty_stop_strings_are_refused() {
        assert!(StopStrings::new(&[String::new()]).is_err());
    }
}
