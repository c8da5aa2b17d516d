//! `moe`: the command line over the library (DESIGN.md section 3). Thin: parse, call, print.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use moe_runtime::config::LayerKind;
use moe_runtime::generate::{Flow, GenerateOptions};
use moe_runtime::sampling::SamplingConfig;
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::weights::Weights;
use moe_runtime::{arch, generate, LoadOptions, Model, MoeImpl};

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
    /// Continue a prompt (text or token ids); stops at an end-of-sequence id, the token budget
    /// or a full context. Text is streamed to stdout as it comes.
    Generate {
        #[command(flatten)]
        common: Common,
        /// The prompt as text (needs tokenizer.json in the model folder).
        #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
        prompt: Option<String>,
        /// The prompt as comma-separated token ids.
        #[arg(long, value_parser = parse_tokens)]
        tokens: Option<TokenIds>,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct SamplingArgs {
    /// 0 is greedy; otherwise logits are divided by it and a token is drawn.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    min_p: Option<f64>,
    /// Penalty on tokens among the last 64 (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn config(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingConfig::default()
        }
    }
}

/// Token ids as given on the command line; an empty list is left for the library to refuse.
#[derive(Clone)]
struct TokenIds(Vec<u32>);

fn parse_tokens(s: &str) -> Result<TokenIds, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| format!("`{t}` is not a token id")))
        .collect::<Result<_, _>>()
        .map(TokenIds)
}

#[derive(Args)]
struct Common {
    /// A hub-layout checkpoint folder (config.json and *.safetensors); the bundled model by default.
    #[arg(long, default_value = moe_runtime::BUNDLED_MODEL)]
    model: PathBuf,
    /// cpu (this build has no CUDA backend yet).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Experts per token, overriding the checkpoint's top-k.
    #[arg(long)]
    experts_per_token: Option<usize>,
    /// Routed-expert implementation: fast, or reference (the slow twin, for checking).
    #[arg(long, default_value = "fast")]
    moe_impl: String,
}

impl Common {
    fn load_options(&self) -> Result<LoadOptions> {
        let dtype = match self.dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => bail!("--dtype {other} is not supported (f32, bf16 or f16)"),
        };
        let device = match self.device.as_str() {
            "cpu" => Device::Cpu,
            other => bail!("--device {other} is not available: this build supports cpu only"),
        };
        Ok(LoadOptions {
            dtype,
            device,
            moe_impl: self.moe_impl.parse::<MoeImpl>()?,
            experts_per_token: self.experts_per_token,
        })
    }

    fn load(&self) -> Result<Model> {
        let opts = self.load_options()?;
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            // candle's matmul reads the variable; rayon's pool serves our kernels.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("setting up the thread pool")?;
        }
        let arch = arch::load(&self.model)?;
        // Fields of config.json that nothing reads are reported, never dropped silently.
        if !arch.unrecognized_fields.is_empty() {
            eprintln!(
                "warning: {}: fields not used by moe-runtime: {}",
                self.model.join("config.json").display(),
                arch.unrecognized_fields.join(", ")
            );
        }
        let weights = Weights::open(&self.model, opts.dtype, &opts.device)?;
        Ok(Model::from_weights(arch, &weights, &opts)?)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { common } => inspect(&common),
        Command::Logits {
            common,
            tokens,
            out,
        } => {
            let model = common.load()?;
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
            max_new_tokens,
            sampling,
            json,
        } => {
            let model = common.load()?;
            let tokenizer = match &prompt {
                Some(_) => Some(Tokenizer::load(&common.model)?),
                None => None,
            };
            let ids = match (&prompt, &tokenizer, tokens) {
                (Some(text), Some(tok), _) => tok.encode(text)?,
                (_, _, Some(ids)) => ids.0,
                _ => bail!("give --prompt or --tokens"),
            };
            let mut stop_tokens = generate::eos_token_ids(&common.model)?;
            stop_tokens.extend(tokenizer.iter().flat_map(|t| t.eos_ids()));
            let opts = GenerateOptions {
                max_new_tokens,
                stop_tokens,
                sampling: sampling.config(),
            };
            let mut stream = tokenizer.as_ref().map(|t| t.stream());
            let mut stream_error = None;
            let gen = generate::generate(&model, &ids, &opts, |id| {
                let Some(stream) = stream.as_mut() else {
                    return Flow::Continue;
                };
                match stream.push(id) {
                    Ok(Some(piece)) if !json => {
                        print!("{piece}");
                        // A closed stdout only loses the echo; generation goes on.
                        let _ = std::io::stdout().flush();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        stream_error = Some(e);
                        return Flow::Stop;
                    }
                }
                Flow::Continue
            })?;
            if let Some(e) = stream_error {
                return Err(e.into());
            }
            let text = match &tokenizer {
                Some(tok) => Some(tok.decode(&gen.tokens)?),
                None => None,
            };
            let s = &gen.stats;
            if json {
                let mut report = serde_json::json!({
                    "tokens": gen.tokens,
                    "prompt_tokens": s.prompt_tokens,
                    "generated_tokens": s.generated_tokens,
                    "prefill_tokens_per_s": s.prefill_tokens_per_s(),
                    "decode_tokens_per_s": s.decode_tokens_per_s(),
                });
                if let Some(text) = text {
                    report["text"] = text.into();
                }
                println!("{report}");
            } else {
                if text.is_some() {
                    println!();
                } else {
                    let ids: Vec<String> = gen.tokens.iter().map(|t| t.to_string()).collect();
                    println!("{}", ids.join(","));
                }
                eprintln!(
                    "prefill {:.1} tokens/s, decode {:.1} tokens/s",
                    s.prefill_tokens_per_s(),
                    s.decode_tokens_per_s()
                );
            }
            Ok(())
        }
    }
}

fn inspect(common: &Common) -> Result<()> {
    let opts = common.load_options()?;
    let arch = arch::load(&common.model)?;
    let c = &arch.config;
    let a = &c.attention;
    let m = &c.moe;
    let sparse = c.layers.iter().filter(|&&k| k == LayerKind::Sparse).count();
    let (total, active) = c.parameter_counts();
    let bytes = opts.dtype.size_in_bytes() as f64;
    println!("model          {}", common.model.display());
    println!("architecture   {}", c.model_type);
    println!(
        "layers         {} ({} sparse, {} dense)",
        c.num_layers(),
        sparse,
        c.num_layers() - sparse
    );
    println!("hidden         {}", c.hidden_size);
    println!(
        "attention      {} heads, {} kv heads, head_dim {}, qk norm {:?}",
        a.num_heads, a.num_kv_heads, a.head_dim, a.qk_norm
    );
    println!(
        "experts        {} routed, top-{}, ffn {}{}",
        m.num_experts,
        m.top_k,
        m.expert_intermediate_size,
        m.shared_expert.as_ref().map_or(String::new(), |s| format!(
            ", shared expert ffn {}",
            s.intermediate_size
        ))
    );
    println!("vocab          {}", c.vocab_size);
    println!("context        {}", c.max_position_embeddings);
    println!(
        "parameters     {:.3}M total, {:.3}M active per token",
        total as f64 / 1e6,
        active as f64 / 1e6
    );
    println!(
        "memory         {:.1} MiB of weights in {:?}",
        total as f64 * bytes / (1 << 20) as f64,
        opts.dtype
    );
    if !arch.unrecognized_fields.is_empty() {
        println!("unused fields  {}", arch.unrecognized_fields.join(", "));
    }
    Ok(())
}
