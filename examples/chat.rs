//! Chat with a model through the public library API: interactive by default, or one answer to
//! `--prompt` and exit. The bundled Shakespeare model unless `--model` names another (a folder
//! or a hub id).
//!
//!     cargo run --release --example chat -- --prompt "ROMEO:" --max-new-tokens 40
//!     cargo run --release --example chat -- --model Qwen/Qwen1.5-MoE-A2.7B-Chat

use std::io::{BufRead, ErrorKind, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use moe_runtime::chat::Chat;
use moe_runtime::generate::{self, Flow, GenerateOptions};
use moe_runtime::reasoning::Part;
use moe_runtime::sampling::SamplingConfig;
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::{hub, LoadOptions, Model};

/// As in the `moe` binary: freed buffers are reused, not unmapped and faulted in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// A checkpoint folder or hub id; the bundled model by default.
    #[arg(long, default_value = moe_runtime::BUNDLED_MODEL)]
    model: String,
    /// Answer this one message and exit.
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// cpu, cuda or cuda:N (CUDA needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seed of the sampler, for answers that repeat; a new one every run by default.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the model's reasoning (`<think>` blocks, gpt-oss's analysis channel) too.
    #[arg(long)]
    show_reasoning: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // stdout's reader went away (`| head`): a quiet end, as a shell reports SIGPIPE's.
        Err(e) if broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens 0 asks for nothing: give at least 1");
    }
    let dir = hub::resolve(&args.model)?;
    let load = LoadOptions {
        device: moe_runtime::device::parse(&args.device)?,
        ..LoadOptions::default()
    };
    let model = Model::load(&dir, &load)?;
    let context = model.config().max_position_embeddings;
    if args.max_new_tokens > context {
        bail!(
            "--max-new-tokens {} is more than the model's context of {context}",
            args.max_new_tokens
        );
    }
    let tokenizer = Tokenizer::load(&dir)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: generate::stop_tokens(&dir, Some(&tokenizer))?,
        // The checkpoint's own sampling settings (generation_config.json).
        sampling: SamplingConfig {
            seed: args.seed.unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map_or(0, |t| t.as_nanos() as u64)
            }),
            ..SamplingConfig::from_generation_config(&dir)?
        },
    };
    let mut chat = Chat::new(&model, &tokenizer, options);

    if let Some(prompt) = args.prompt {
        return say(&mut chat, &prompt, args.show_reasoning);
    }
    let _ = writeln!(
        std::io::stderr(),
        "Talking to {}. /reset starts over, /exit quits.",
        dir.display()
    );
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("stdin line {}", number + 1))?;
        match line.trim() {
            "/exit" => break,
            "/reset" => chat.reset(),
            "" => {}
            message => say(&mut chat, message, args.show_reasoning)?,
        }
    }
    Ok(())
}

/// Sends one message and streams the answer (and the reasoning, if asked) to stdout, its speed
/// to stderr. A write to stdout that fails stops the answer and is the error (`print!` would
/// panic there).
fn say(chat: &mut Chat, message: &str, show_reasoning: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    let answer = chat.send(message, |part, piece| {
        if part == Part::Answer || (show_reasoning && part == Part::Reasoning) {
            if let Err(e) = write!(out, "{piece}").and_then(|()| out.flush()) {
                failed = Some(e);
                return Flow::Stop;
            }
        }
        Flow::Continue
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    writeln!(out)?;
    for call in &answer.tool_calls {
        writeln!(out, "[tool call] {} {}", call.name, call.arguments)?;
    }
    let stats = &answer.generation.stats;
    let _ = writeln!(
        std::io::stderr(),
        "[{} tokens, {:.0} ms to the first, then {:.1} tokens/s]",
        stats.generated_tokens,
        stats.time_to_first_token_secs() * 1e3,
        stats.decode_tokens_per_s()
    );
    Ok(())
}
