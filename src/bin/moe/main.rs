//! `moe`: the command line over the library (DESIGN.md section 3). Thin: parse, call, print.

mod bench;
mod bounds;
mod chat;
mod common;
mod compare;
mod energy;
mod explore;
mod generate;
mod inspect;
mod output;
mod serve;
mod show;
mod tokenize;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use common::{Common, ModelArg, SamplingArgs};

/// Freed buffers stay with the process for the next forward instead of being unmapped and
/// faulted in again (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "moe", version, about = "Sparse Mixture-of-Experts inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, parameters (total and active per token) and memory of a checkpoint.
    Inspect {
        #[command(flatten)]
        common: Common,
    },
    /// Logits at every position of a token sequence, written as safetensors ("logits": F32 [T, vocab]).
    Logits {
        #[command(flatten)]
        common: Common,
        /// Comma-separated token ids.
        #[arg(long, value_parser = parse_tokens)]
        tokens: TokenIds,
        #[arg(long)]
        out: PathBuf,
    },
    /// Continue a prompt (text or token ids); stops at an end-of-sequence id, a stop string,
    /// the token budget or a full context. Text is streamed to stdout as it comes.
    Generate {
        #[command(flatten)]
        common: Common,
        /// The prompt as text (needs tokenizer.json in the model folder).
        #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
        prompt: Option<String>,
        /// The prompt as comma-separated token ids.
        #[arg(long, value_parser = parse_tokens)]
        tokens: Option<TokenIds>,
        /// Wrap the prompt in the model's chat template, as one user message.
        #[arg(long, requires = "prompt")]
        chat: bool,
        /// With --chat: a system message before the prompt.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// New tokens at most [default: 32]. Given, the prompt and this many new tokens must
        /// fit in the model's context; left out, generation stops where the context is full.
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// Stop when this text appears (left out of the output); may be given several times.
        #[arg(long = "stop", requires = "prompt")]
        stop_strings: Vec<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Print the model's reasoning (`<think>` blocks, gpt-oss's analysis channel) before
        /// its answer; hidden by default.
        #[arg(long)]
        show_reasoning: bool,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Talk with the model: each line is a message, answers stream as they come.
    /// `/reset` starts over, `/exit` (or end of input) quits.
    Chat {
        #[command(flatten)]
        common: Common,
        /// A system message that starts every conversation.
        #[arg(long)]
        system: Option<String>,
        /// New tokens at most per answer, within the model's context; an answer stops early
        /// where the conversation fills the context.
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Print the model's reasoning before each answer; hidden by default.
        #[arg(long)]
        show_reasoning: bool,
    },
    /// Prefill and decode throughput (medians over repeats after a warm-up) against the
    /// bandwidth limit of decode: bytes of weights read per token and the measured read
    /// bandwidth of this machine.
    Bench {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 32)]
        gen_len: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Sequences decoded together; tokens/s are those of the whole batch. Several sizes,
        /// comma-separated (1,8,32), are measured one after another on one loaded model, each
        /// reported on its own (with --json, one line each).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        batch: Vec<usize>,
        /// With --random-weights: the config.json whose shape to build (no checkpoint needed).
        #[arg(long, requires = "random_weights")]
        config: Option<PathBuf>,
        /// Build the model from --config with random weights in memory instead of loading one.
        #[arg(long, requires = "config")]
        random_weights: bool,
        #[command(flatten)]
        energy: energy::EnergyArgs,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Sweep experts per token (1 up to every expert), weight format and batch size: decode
    /// and prefill tokens/s, energy (or core-seconds), bytes read per token, and quality (KL,
    /// top-1, perplexity) against the model's own setting on a held-out text. Writes
    /// explore.json, explore.md and SVG charts to --out.
    Explore(explore::ExploreArgs),
    /// Several checkpoints measured the same way on one held-out text, each at its own
    /// settings in each format: decode and prefill tokens/s, energy (or core-seconds), bytes
    /// read and FLOPs per token, perplexity and bits per byte. Writes compare.json, compare.md
    /// and quality_vs_cost.svg to --out. By default the bundled MoE and its trained twins.
    Compare(compare::CompareArgs),
    /// The ids of a text with the model's tokenizer (nothing added and special-token text read
    /// as plain text unless asked), or with --decode the text of ids. Needs only the
    /// tokenizer files.
    Tokenize(tokenize::TokenizeArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat and text completions, streamed
    /// or not, models, health, Prometheus metrics), batching requests continuously.
    Serve(serve::ServeArgs),
    /// Render a conversation with the model's chat template; needs only tokenizer.json and
    /// tokenizer_config.json (or chat_template.jinja) in the model folder.
    Prompt {
        #[command(flatten)]
        model: ModelArg,
        /// A JSON file: a list of {"role", "content"} messages, or
        /// {"messages": [...], "tools": [...]}.
        #[arg(long)]
        messages: PathBuf,
        /// Leave out the assistant header that invites the model to answer.
        #[arg(long)]
        no_generation_prompt: bool,
        /// Print {"text", "tokens"} as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Token ids as given on the command line; an empty list is left for the library to refuse.
#[derive(Clone)]
pub struct TokenIds(pub Vec<u32>);

pub fn parse_tokens(s: &str) -> Result<TokenIds, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| format!("`{t}` is not a token id")))
        .collect::<Result<_, _>>()
        .map(TokenIds)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away: nothing more to say, and nobody to say it to.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(output::BROKEN_PIPE_STATUS),
        Err(e) => {
            output::note!("error: {}", output::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// A command line clap cannot read: its message on one line, without the usage that follows
/// (`--help` has it), exit status 2 as clap gives. Help and version print as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        e.exit();
    }
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    output::note!(
        "{} (--help lists the options)",
        output::one_line(&message.join("\n"))
    );
    ExitCode::from(2)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { common } => inspect::run(&common),
        Command::Logits {
            common,
            tokens,
            out,
        } => {
            let (model, _) = common.load()?;
            let logits = model.forward(&tokens.0, &mut model.new_cache())?;
            let tensors = HashMap::from([("logits".to_string(), logits)]);
            candle_core::safetensors::save(&tensors, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
        Command::Generate {
            common,
            prompt,
            tokens,
            chat,
            system,
            max_new_tokens,
            stop_strings,
            sampling,
            show_reasoning,
            json,
        } => {
            let prompt = match (prompt, tokens) {
                (Some(text), _) if chat => generate::Prompt::Chat { system, user: text },
                (Some(text), _) => generate::Prompt::Text(text),
                (None, Some(ids)) => generate::Prompt::Tokens(ids.0),
                (None, None) => anyhow::bail!("give --prompt or --tokens"),
            };
            let request = generate::Request {
                prompt,
                max_new_tokens,
                stop_strings,
                show_reasoning,
                json,
            };
            generate::run(&common, &request, &sampling)
        }
        Command::Chat {
            common,
            system,
            max_new_tokens,
            sampling,
            show_reasoning,
        } => chat::run(&common, system, max_new_tokens, &sampling, show_reasoning),
        Command::Bench {
            common,
            prompt_len,
            gen_len,
            repeats,
            batch,
            config,
            random_weights: _,
            energy,
            json,
        } => {
            let opts: Vec<_> = batch
                .into_iter()
                .map(|batch| moe_runtime::bench::BenchOptions {
                    prompt_len,
                    gen_len,
                    repeats,
                    batch,
                    idle_seconds: energy.idle_seconds,
                })
                .collect();
            bench::run(&common, config.as_deref(), &opts, &energy, json)
        }
        Command::Explore(args) => explore::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Tokenize(args) => tokenize::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Prompt {
            model,
            messages,
            no_generation_prompt,
            json,
        } => generate::prompt(&model, &messages, !no_generation_prompt, json),
    }
}
