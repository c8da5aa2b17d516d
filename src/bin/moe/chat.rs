//! `moe chat`: an interactive conversation on the terminal (or over a pipe).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};
use moe_runtime::chat::Chat;
use moe_runtime::generate::{self, GenerateOptions, StopReason};
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::Limits;

use crate::bounds;
use crate::common::{Common, SamplingArgs};
use crate::generate::speed;
use crate::output::{self, note};
use crate::show::Printer;

pub fn run(
    common: &Common,
    system: Option<String>,
    max_new_tokens: usize,
    sampling: &SamplingArgs,
    show_reasoning: bool,
) -> Result<()> {
    bounds::positive("--max-new-tokens", max_new_tokens)?;
    let (model, dir) = common.load()?;
    let tokenizer = Tokenizer::load(&dir)?;
    if tokenizer.chat_template().is_none() {
        bail!(
            "{}: the checkpoint has no chat template; use `moe generate --prompt` instead",
            dir.display()
        );
    }
    // One answer cannot outgrow the context; a conversation that fills it ends its answer
    // early and says so below.
    let context = model.config().max_position_embeddings;
    let why = "the model's context, max_position_embeddings";
    bounds::at_most("--max-new-tokens", max_new_tokens, context, why)?;
    let opts = GenerateOptions {
        max_new_tokens,
        stop_tokens: generate::stop_tokens(&dir, Some(&tokenizer))?,
        sampling: sampling.config(&dir)?,
    };
    let mut chat = Chat::new(&model, &tokenizer, opts);
    if let Some(system) = system {
        chat = chat.with_system(system);
    }
    let stdin = std::io::stdin();
    // The greeting is for a person at a terminal; over a pipe, stderr carries only what
    // happened.
    if stdin.is_terminal() {
        note!(
            "chatting with {} (/reset starts over, /exit quits)",
            dir.display()
        );
    }
    let mut printer = Printer::new(show_reasoning);
    let mut lines = Lines::new(stdin.lock());
    let mut out = output::stdout();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let Some(line) = lines.next()? else {
            writeln!(out)?;
            return Ok(());
        };
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                chat.reset();
                note!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        let answer = chat.send(&line, |part, piece| printer.piece(part, piece))?;
        printer.finish(&answer.tool_calls)?;
        note!("[{}]", speed(&answer.generation));
        if answer.generation.stop == StopReason::ContextFull {
            note!("(the context is full: /reset to start over)");
        }
    }
}

/// The messages on stdin, one a line: each UTF-8 and no longer than the largest prompt a
/// template may render (`Limits::max_rendered_bytes`), checked as it is read, so that a line
/// without end or binary data is one error naming stdin and the line.
struct Lines<R> {
    input: R,
    number: usize,
    max: usize,
}

impl<R: BufRead> Lines<R> {
    fn new(input: R) -> Self {
        Lines {
            input,
            number: 0,
            max: Limits::current().max_rendered_bytes,
        }
    }

    /// The next line without its end, or `None` at the end of input.
    fn next(&mut self) -> Result<Option<String>> {
        self.number += 1;
        let mut bytes = Vec::new();
        let read = (&mut self.input)
            .take(self.max as u64 + 1)
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("reading stdin line {}", self.number))?;
        if read == 0 {
            return Ok(None);
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        } else if bytes.len() > self.max {
            bail!(
                "stdin line {} is longer than the {} bytes a message may have \
                 (Limits::max_rendered_bytes)",
                self.number,
                self.max
            );
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8(bytes).map(Some).map_err(|e| {
            let column = e.utf8_error().valid_up_to() + 1;
            anyhow::anyhow!(
                "stdin line {} is not UTF-8 text (an invalid byte at column {column}): messages \
                 must be text",
                self.number
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_line_that_is_not_text() {
        let mut lines = Lines::new(&b"hello\r\n\nbad \xff here\n"[..]);
        assert_eq!(lines.next().unwrap().as_deref(), Some("hello"));
        assert_eq!(lines.next().unwrap().as_deref(), Some(""));
        let e = lines.next().unwrap_err().to_string();
        assert!(
            e.contains("stdin line 3 is not UTF-8 text (an invalid byte at column 5"),
            "{e}"
        );
    }

    #[test]
    fn a_line_without_end_is_refused_at_the_limit() {
        let mut lines = Lines::new(&b"abcdef"[..]);
        lines.max = 4;
        let e = lines.next().unwrap_err().to_string();
        assert!(e.contains("stdin line 1 is longer than the 4 bytes"), "{e}");
        let mut lines = Lines::new(&b"abc"[..]);
        lines.max = 4;
        assert_eq!(lines.next().unwrap().as_deref(), Some("abc"));
        assert_eq!(lines.next().unwrap(), None);
    }
}
