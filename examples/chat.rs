//! Chat with a model through the public library API: interactive by default, or one answer to
//! `--prompt` and exit. The bundled Shakespeare model unless `--model` names another (a folder
//! or a hub id).
//!
//!     cargo run --release --example chat -- --prompt "ROMEO:" --max-new-tokens 40
//!     cargo run --release --example chat -- --model Qwen/Qwen1.5-MoE-A2.7B-Chat

use std::io::{BufRead, Write};

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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = hub::resolve(&args.model)?;
    let load = LoadOptions {
        device: moe_runtime::device::parse(&args.device)?,
        ..LoadOptions::default()
    };
    let model = Model::load(&dir, &load)?;
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
    eprintln!(
        "Talking to {}. /reset starts over, /exit quits.",
        dir.display()
    );
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "/exit" => break,
            "/reset" => chat.reset(),
            "" => {}
            message => say(&mut chat, message, args.show_reasoning)?,
        }
    }
    Ok(())
}

/// Sends one message and streams the answer (and the reasoning, if asked) to stdout, its speed
/// to stderr.
fn say(chat: &mut Chat, message: &str, show_reasoning: bool) -> anyhow::Result<()> {
    let answer = chat.send(message, |part, piece| {
        if part == Part::Answer || (show_reasoning && part == Part::Reasoning) {
            print!("{piece}");
            std::io::stdout().flush().ok();
        }
        Flow::Continue
    })?;
    println!();
    for call in &answer.tool_calls {
        println!("[tool call] {} {}", call.name, call.arguments);
    }
    let stats = &answer.generation.stats;
    eprintln!(
        "[{} tokens, {:.0} ms to the first, then {:.1} tokens/s]",
        stats.generated_tokens,
        stats.time_to_first_token_secs() * 1e3,
        stats.decode_tokens_per_s()
    );
    Ok(())
}
