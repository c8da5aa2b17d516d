//! Options every command shares: which model, where and how to run it, how to sample.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_runtime::arch::{self, Architecture};
use moe_runtime::gguf::{GgmlType, GGUF_NAMES};
use moe_runtime::sampling::SamplingConfig;
use moe_runtime::weights::Weights;
use moe_runtime::{hub, Kernels, Limits, LoadOptions, Model};

use crate::output::note;

/// Checkpoints smaller than this load too fast for a progress bar to help.
const PROGRESS_BAR_BYTES: f64 = 256e6;

#[derive(Args)]
pub struct ModelArg {
    /// A hub-layout checkpoint folder, or a hub id (org/name) found in the HF cache or
    /// downloaded into it; the bundled model by default.
    #[arg(long, default_value = moe_runtime::BUNDLED_MODEL)]
    pub model: String,
}

impl ModelArg {
    /// The checkpoint's folder (downloading a hub id when it is not cached yet).
    pub fn dir(&self) -> Result<PathBuf> {
        if self.model.trim().is_empty() {
            bail!(
                "--model is empty: give a checkpoint folder, a GGUF file or a hub id (org/name), \
                 or leave it out for the bundled model"
            );
        }
        Ok(hub::resolve(&self.model)?)
    }

    /// A short name for the model: a hub id as given, a folder's or a file's own name.
    pub fn name(&self) -> String {
        let path = Path::new(&self.model);
        match path.exists() {
            true => path
                .file_name()
                .map_or_else(|| self.model.clone(), |n| n.to_string_lossy().into_owned()),
            false => self.model.clone(),
        }
    }
}

#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub runtime: Runtime,
    /// Compute dtype: f32, bf16 or f16. By default f32; for a GGUF file, its embedding
    /// table's F32, BF16 or F16, or, where that is quantized, f32 on the CPU and bf16 on a GPU.
    #[arg(long)]
    dtype: Option<String>,
    /// Convert the weights of matrix products at load: q8_0, q4_0, q5_0, mxfp4, q4_K, q5_K or q6_K
    /// (CPU only; the K-quants with plain min/max scales, not llama.cpp's search, and q8_0 for
    /// rows that are not whole super-blocks of 256).
    #[arg(long)]
    quant: Option<String>,
    /// Experts per token, overriding the checkpoint's top-k.
    #[arg(long)]
    experts_per_token: Option<usize>,
    /// Check that every weight read is a finite number (a NaN is named by its tensor at load
    /// rather than found as NaN logits): auto (checkpoints up to 512 MiB), on or off.
    #[arg(long, default_value = "auto")]
    check_weights: String,
}

impl Common {
    pub fn load_options(&self) -> Result<LoadOptions> {
        let base = self.runtime.load_options()?;
        let dtype = match self.dtype.as_deref() {
            Some("f32") => DType::F32,
            Some("bf16") => DType::BF16,
            Some("f16") => DType::F16,
            Some(other) => bail!("--dtype {other} is not supported (f32, bf16 or f16)"),
            None => self.file_dtype(base.device.is_cpu()),
        };
        Ok(LoadOptions {
            dtype,
            experts_per_token: self.experts_per_token,
            quant: self.quant.as_deref().map(str::parse).transpose()?,
            check_weights: self.check_weights.parse()?,
            ..base
        })
    }

    /// For a GGUF file, the dtype its embedding table is stored in (F32, BF16 or F16). Where it
    /// is quantized: f32 on the CPU, as llama.cpp computes (the kernels read the blocks and
    /// quantize x themselves; norms, residuals and attention then run without bf16 conversions
    /// between ops: q3-mini Q4_0 prefill 1.19x and decode 1.24x, Q4_K_M 1.14x and 1.17x, Intel
    /// Xeon without AMX), at f32's bytes for the few tensors kept dense and the cache; bf16 on
    /// a GPU, where the blocks are dequantized at load to it. f32 for anything else.
    fn file_dtype(&self, cpu: bool) -> DType {
        let path = Path::new(&self.model.model);
        if !moe_runtime::gguf::holds_gguf(path) {
            return DType::F32;
        }
        let stored = moe_runtime::gguf::Gguf::open(path)
            .ok()
            .and_then(|f| f.tensor(GGUF_NAMES.embed).map(|t| t.ggml_type));
        match stored {
            Some(GgmlType::F32) | None => DType::F32,
            Some(GgmlType::F16) => DType::F16,
            Some(GgmlType::BF16) => DType::BF16,
            Some(_) if cpu => DType::F32,
            Some(_) => DType::BF16,
        }
    }

    /// The model and its folder.
    pub fn load(&self) -> Result<(Model, PathBuf)> {
        // The flags first: a bad one is refused before a hub id is downloaded.
        let opts = self.load_options()?;
        let dir = self.model.dir()?;
        Ok((self.runtime.load(&dir, &opts)?, dir))
    }

    /// A model of the shape in config.json file `config`, with random weights made in memory.
    pub fn load_random(&self, config: &Path) -> Result<Model> {
        self.runtime.load_random(config, &self.load_options()?)
    }
}

/// Where and how a model runs, whatever its weights: device, threads, MoE implementation.
#[derive(Args)]
pub struct Runtime {
    /// cpu, cuda (GPU 0) or cuda:N; CUDA needs a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Kernels: fast (the device's own), or reference (every op's slow twin, for checking).
    /// `--moe-impl` is its older name.
    #[arg(long, alias = "moe-impl", default_value = "fast")]
    kernels: String,
}

impl Runtime {
    /// Load options with this device and kernels, the rest at their defaults.
    pub fn load_options(&self) -> Result<LoadOptions> {
        if let Some(n) = self.threads {
            Limits::current().check_threads("--threads", n)?;
        }
        Ok(LoadOptions {
            device: moe_runtime::device::parse(&self.device)?,
            kernels: self.kernels.parse::<Kernels>()?,
            ..LoadOptions::default()
        })
    }

    /// The checkpoint in `dir` loaded with `opts`; a progress bar on stderr while a large one
    /// loads (drawn only when stderr is a terminal).
    pub fn load(&self, dir: &Path, opts: &LoadOptions) -> Result<Model> {
        let (arch, weights) = moe_runtime::layers::open(dir, opts)?;
        let config = match moe_runtime::gguf::holds_gguf(dir) {
            true => dir.to_path_buf(),
            false => dir.join("config.json"),
        };
        self.build(&config, arch, &weights, opts)
    }

    /// A model of the shape in config.json file `config`, with random weights made in memory:
    /// refused before the first is made when they would not fit in the memory available.
    pub fn load_random(&self, config: &Path, opts: &LoadOptions) -> Result<Model> {
        let text = read_input("--config", config)?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", config.display()))?;
        let arch = arch::parse(config, json)?;
        // In host memory on the CPU; a GPU's own memory is the device's to refuse.
        if opts.device.is_cpu() {
            let (total, _) = arch.config.parameter_counts();
            let what = format!(
                "random weights for {} ({:.3}B parameters in {:?})",
                config.display(),
                total as f64 / 1e9,
                opts.dtype
            );
            let bytes = total.saturating_mul(opts.dtype.size_in_bytes() as u128);
            Limits::current().check_memory(&what, bytes)?;
        }
        let weights = Weights::random(0, opts.dtype, &opts.device);
        self.build(config, arch, &weights, opts)
    }

    fn build(
        &self,
        config: &Path,
        arch: Architecture,
        weights: &Weights,
        opts: &LoadOptions,
    ) -> Result<Model> {
        self.set_threads()?;
        // Fields of config.json that nothing reads are reported, never dropped silently.
        if !arch.unrecognized_fields.is_empty() {
            note!(
                "warning: {}: fields not used by moe-runtime: {}",
                config.display(),
                arch.unrecognized_fields.join(", ")
            );
        }
        let (total, _) = arch.config.parameter_counts();
        let bar = if total as f64 * opts.dtype.size_in_bytes() as f64 >= PROGRESS_BAR_BYTES {
            let bar = ProgressBar::new(arch.config.num_layers() as u64);
            bar.set_style(
                ProgressStyle::with_template("loading {bar:40} {pos}/{len} layers {elapsed}")
                    .expect("a valid template"),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let model = Model::from_weights_with_progress(arch, weights, opts, |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        // Tensors of the checkpoint that nothing read are reported, never ignored silently
        // (the first few by name: a checkpoint of another model may have thousands).
        let unread = model.unread_tensors();
        if !unread.is_empty() {
            const SHOWN: usize = 10;
            let names = unread[..unread.len().min(SHOWN)].join(", ");
            let more = match unread.len() > SHOWN {
                true => format!(", and {} more", unread.len() - SHOWN),
                false => String::new(),
            };
            note!(
                "warning: {}: {} tensors not read by moe-runtime: {names}{more}",
                config.display(),
                unread.len()
            );
        }
        Ok(model)
    }

    /// `--threads`: the size of rayon's pool (our kernels) and candle's (its matmul); set at
    /// the first load (`moe explore` loads many models; the pool can be built only once).
    fn set_threads(&self) -> Result<()> {
        static SET: AtomicBool = AtomicBool::new(false);
        let Some(n) = self.threads else {
            return Ok(());
        };
        Limits::current().check_threads("--threads", n)?;
        if SET.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")
    }
}

/// The text of the file at `path`, which `what` (its flag) names in errors, read whole: a
/// regular file (a FIFO or a device would block or never end) of at most
/// `Limits::max_json_bytes`, checked before it is read.
pub fn read_input(what: &str, path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "a FIFO, socket or device"
        };
        bail!("{what} {}: is {kind}, not a regular file", path.display());
    }
    let max = Limits::current().max_json_bytes;
    if meta.len() > max {
        bail!(
            "{what} {}: is {} bytes, more than the {max} an input file may have \
             (Limits::max_json_bytes)",
            path.display(),
            meta.len()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("{what} {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        anyhow::anyhow!(
            "{what} {}: is not UTF-8 text (an invalid byte at offset {at})",
            path.display()
        )
    })
}

/// Sampling flags; any left out take the checkpoint's generation_config.json defaults
/// (greedy when it does not sample).
#[derive(Args)]
pub struct SamplingArgs {
    /// 0 is greedy; otherwise logits are divided by it and a token is drawn.
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    min_p: Option<f64>,
    /// Penalty on tokens among the last 64 (1 = off).
    #[arg(long)]
    repeat_penalty: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    pub fn config(&self, dir: &std::path::Path) -> Result<SamplingConfig> {
        let mut cfg = SamplingConfig::from_generation_config(dir)?;
        if let Some(t) = self.temperature {
            cfg.temperature = t;
        }
        cfg.top_k = self.top_k.or(cfg.top_k);
        cfg.top_p = self.top_p.or(cfg.top_p);
        cfg.min_p = self.min_p.or(cfg.min_p);
        if let Some(r) = self.repeat_penalty {
            cfg.repeat_penalty = r;
        }
        cfg.seed = self.seed;
        Ok(cfg)
    }
}
