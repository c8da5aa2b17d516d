//! `moe chat`: an interactive conversation on the terminal (or over a pipe).

use std::io::{BufRead, Write};

use anyhow::Result;
use moe_runtime::chat::Chat;
use moe_runtime::generate::{self, Flow, GenerateOptions, StopReason};
use moe_runtime::tokenizer::Tokenizer;

use crate::common::{Common, SamplingArgs};
use crate::generate::speed;
use crate::show::Printer;

pub fn run(
    common: &Common,
    system: Option<String>,
    max_new_tokens: usize,
    sampling: &SamplingArgs,
    show_reasoning: bool,
) -> Result<()> {
    let (model, dir) = common.load()?;
    let tokenizer = Tokenizer::load(&dir)?;
    if tokenizer.chat_template().is_none() {
        anyhow::bail!(
            "{}: the checkpoint has no chat template; use `moe generate --prompt` instead",
            dir.display()
        );
    }
    let opts = GenerateOptions {
        max_new_tokens,
        stop_tokens: generate::stop_tokens(&dir, Some(&tokenizer))?,
        sampling: sampling.config(&dir)?,
    };
    let mut chat = Chat::new(&model, &tokenizer, opts);
    if let Some(system) = system {
        chat = chat.with_system(system);
    }
    eprintln!(
        "chatting with {} (/reset starts over, /exit quits)",
        dir.display()
    );
    let mut printer = Printer::new(show_reasoning);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next().transpose()? else {
            println!();
            return Ok(());
        };
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                chat.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        let answer = chat.send(&line, |part, piece| {
            printer.piece(part, piece);
            Flow::Continue
        })?;
        printer.finish(&answer);
        eprintln!("[{}]", speed(&answer.generation));
        if answer.generation.stop == StopReason::ContextFull {
            eprintln!("(the context is full: /reset to start over)");
        }
    }
}
