//! Generated text on the terminal: the answer on stdout as it comes; the reasoning too when
//! asked for (`--show-reasoning`), else one note on stderr that the model is thinking; tool
//! calls whole, once generation ends.

use std::io::Write;

use moe_runtime::reasoning::Part;
use moe_runtime::text::TextGeneration;

pub struct Printer<W: Write = std::io::Stdout> {
    out: W,
    show_reasoning: bool,
    /// The part printed last.
    last: Option<Part>,
    /// Whether the note on hidden reasoning was written.
    noted: bool,
}

impl Printer {
    pub fn new(show_reasoning: bool) -> Printer {
        Printer::to(std::io::stdout(), show_reasoning)
    }
}

impl<W: Write> Printer<W> {
    pub fn to(out: W, show_reasoning: bool) -> Printer<W> {
        Printer {
            out,
            show_reasoning,
            last: None,
            noted: false,
        }
    }

    // A closed stdout only loses the echo; generation goes on: write errors are ignored.
    pub fn piece(&mut self, part: Part, text: &str) {
        match part {
            Part::Reasoning if !self.show_reasoning => {
                if !self.noted {
                    eprintln!("(thinking; --show-reasoning shows it)");
                    self.noted = true;
                }
                return;
            }
            Part::ToolCall => return,
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
        let _ = write!(self.out, "{label}{text}");
        let _ = self.out.flush();
    }

    /// Ends the answer's line and prints the tool calls it asked for.
    pub fn finish(&mut self, answer: &TextGeneration) {
        if self.last.is_some() {
            let _ = writeln!(self.out);
        }
        for call in &answer.tool_calls {
            let _ = writeln!(self.out, "[tool call] {} {}", call.name, call.arguments);
        }
        self.last = None;
        self.noted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(show_reasoning: bool, pieces: &[(Part, &str)]) -> String {
        let mut printer = Printer::to(Vec::new(), show_reasoning);
        for &(part, text) in pieces {
            printer.piece(part, text);
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
}
