//! Generated text on the terminal: the answer on stdout as it comes; the reasoning too when
//! asked for (`--show-reasoning`), else one note on stderr that the model is thinking; tool
//! calls whole, once generation ends. A write that fails (the reader of stdout went away)
//! stops generation and is returned by [`Printer::finish`].

use std::io::{StdoutLock, Write};

use moe_runtime::generate::Flow;
use moe_runtime::reasoning::{Part, ToolCall};

use crate::output::{self, note};

pub struct Printer<W: Write = StdoutLock<'static>> {
    out: W,
    show_reasoning: bool,
    /// The part printed last.
    last: Option<Part>,
    /// Whether the note on hidden reasoning was written.
    noted: bool,
    /// The first write that failed; nothing is written after it.
    failed: Option<std::io::Error>,
}

impl Printer {
    pub fn new(show_reasoning: bool) -> Printer {
        Printer::to(output::stdout(), show_reasoning)
    }
}

impl<W: Write> Printer<W> {
    pub fn to(out: W, show_reasoning: bool) -> Printer<W> {
        Printer {
            out,
            show_reasoning,
            last: None,
            noted: false,
            failed: None,
        }
    }

    /// Prints a piece of `part`; [`Flow::Stop`] once a write has failed, so that generation
    /// ends there instead of computing what nobody reads.
    pub fn piece(&mut self, part: Part, text: &str) -> Flow {
        if self.failed.is_some() {
            return Flow::Stop;
        }
        match part {
            Part::Reasoning if !self.show_reasoning => {
                if !self.noted {
                    note!("(thinking; --show-reasoning shows it)");
                    self.noted = true;
                }
                return Flow::Continue;
            }
            Part::ToolCall => return Flow::Continue,
            _ => {}
        }
        // Labels only where reasoning is shown: a model that does not reason reads as before.
        let label = match (self.last, part) {
            (None, Part::Reasoning) => "[reasoning]\n",
            (Some(last), Part::Reasoning) if last != part => "\n[reasoning]\n",
            (Some(Part::Reasoning), Part::Answer) => "\n[answer]\n",
            _ => "",
        };
        self.last = Some(part);
        let written = write!(self.out, "{label}{text}").and_then(|()| self.out.flush());
        match written {
            Ok(()) => Flow::Continue,
            Err(e) => {
                self.failed = Some(e);
                Flow::Stop
            }
        }
    }

    /// Ends the answer's line and prints the tool calls it asked for; the first write that
    /// failed, here or in [`Printer::piece`], is the error.
    pub fn finish(&mut self, tool_calls: &[ToolCall]) -> std::io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.last.is_some() {
            writeln!(self.out)?;
        }
        for call in tool_calls {
            writeln!(self.out, "[tool call] {} {}", call.name, call.arguments)?;
        }
        self.out.flush()?;
        self.last = None;
        self.noted = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(show_reasoning: bool, pieces: &[(Part, &str)]) -> String {
        let mut printer = Printer::to(Vec::new(), show_reasoning);
        for &(part, text) in pieces {
            assert_eq!(printer.piece(part, text), Flow::Continue);
        }
        String::from_utf8(printer.out).unwrap()
    }

    #[test]
    fn reasoning_is_labelled_once_per_stretch_or_left_out() {
        use Part::*;
        let pieces = [
            (Reasoning, "Add"),
            (Reasoning, " them."),
            (Answer, "Four"),
            (Answer, "."),
            (ToolCall, "{}"),
        ];
        assert_eq!(
            printed(true, &pieces),
            "[reasoning]\nAdd them.\n[answer]\nFour."
        );
        assert_eq!(printed(false, &pieces), "Four.");
        assert_eq!(printed(true, &[(Answer, "a"), (Answer, "b")]), "ab");
    }

    /// A writer whose reader has gone, as stdout is under `| head -c 1`.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_stops_generation_and_is_the_error() {
        let mut printer = Printer::to(Closed, false);
        assert_eq!(printer.piece(Part::Answer, "a"), Flow::Stop);
        assert_eq!(printer.piece(Part::Answer, "b"), Flow::Stop);
        let e = printer.finish(&[]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
