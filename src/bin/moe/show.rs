//! Generated text on the terminal: the answer on stdout as it comes; the reasoning too when
//! asked for (`--show-reasoning`), else one note on stderr that the model is thinking; tool
//! calls whole, once generation ends.

use std::io::Write;

use moe_runtime::reasoning::Part;
use moe_runtime::text::TextGeneration;

pub struct Printer {
    show_reasoning: bool,
    /// The part printed last.
    last: Option<Part>,
    /// Whether the note on hidden reasoning was written.
    noted: bool,
}

impl Printer {
    pub fn new(show_reasoning: bool) -> Printer {
        Printer {
            show_reasoning,
            last: None,
            noted: false,
        }
    }

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
        match (self.last, part) {
            (None, Part::Reasoning) => println!("[reasoning]"),
            (Some(_), Part::Reasoning) => println!("\n[reasoning]"),
            (Some(Part::Reasoning), Part::Answer) => println!("\n[answer]"),
            _ => {}
        }
        self.last = Some(part);
        print!("{text}");
        // A closed stdout only loses the echo; generation goes on.
        let _ = std::io::stdout().flush();
    }

    /// Ends the answer's line and prints the tool calls it asked for.
    pub fn finish(&mut self, answer: &TextGeneration) {
        if self.last.is_some() {
            println!();
        }
        for call in &answer.tool_calls {
            println!("[tool call] {} {}", call.name, call.arguments);
        }
        self.last = None;
        self.noted = false;
    }
}
