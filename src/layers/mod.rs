//! The layers: `Model` (embedding -> decoder blocks -> final norm -> head, shared by every
//! family), `Block`, `Attention`, `SparseMoe`, `Mlp`, `Linear`, and the per-sequence `Cache`.
//! Layers hold weights and call ops through the model's `Backend`; none asks which device it
//! is on.

mod attention;
mod block;
mod cache;
mod latent_attention;
mod linear;
mod linear_attention;
mod load;
mod mlp;
mod moe;
mod norm;
mod rope;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use block::{Block, FeedForward};
pub(crate) use cache::shared_start;
pub use cache::Cache;
pub use linear::Linear;
pub use mlp::Mlp;
pub use moe::{Router, SharedExpert, SparseMoe};
pub use norm::Norm;

use crate::arch::{self, Architecture};
use crate::error::{Error, Result};
use crate::ops::{Backend, Kernels};
use crate::quant::{QuantFormat, Weight};
use crate::spec::{AttentionKind, EmbeddedAs, ModelConfig};
use crate::weights::{CheckWeights, Weights};
use attention::{Sequence, Step};
use load::{FormatTally, LayerReader};
use rope::Rope;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype; weights are converted to it at load.
    pub dtype: DType,
    pub device: Device,
    /// The device's fast kernels, or every op's slow twin (the reference backend).
    pub kernels: Kernels,
    /// Overrides the checkpoint's experts per token (1..=num_experts).
    pub experts_per_token: Option<usize>,
    /// Converts the weights of matrix products (attention, experts, MLPs, head) to this format
    /// at load; CPU only.
    pub quant: Option<QuantFormat>,
    /// Whether every weight read is checked to be a finite number (by default, for
    /// checkpoints up to `weights::AUTO_CHECK_BYTES`).
    pub check_weights: CheckWeights,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            kernels: Kernels::default(),
            experts_per_token: None,
            quant: None,
            check_weights: CheckWeights::default(),
        }
    }
}

/// The head's format under `--quant`: q8_0 for every quantized format, as llama.cpp keeps the
/// output matrix at higher precision than 4-bit (the logits are what everything is judged by).
fn head_format(quant: Option<QuantFormat>) -> Option<QuantFormat> {
    quant.map(|_| QuantFormat::Q8_0)
}

/// The immutable weights of a model. `Send + Sync`: many sequences, each with its own `Cache`,
/// can share one `Model`.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ModelConfig,
    /// (vocab, hidden)
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    /// (vocab, hidden); the embedding table itself when tied.
    lm_head: Linear,
    rope: Rope,
    /// The full-attention layers' own RoPE (`ModelConfig::global_attention`).
    global_rope: Option<Rope>,
    /// Multiplies the embeddings: `Scales::embedding`, rounded to the compute dtype where
    /// `Scales::embedding_in_dtype` says so.
    embed_scale: f64,
    device: Device,
    /// Runs every op; chosen from the device, dtype and `LoadOptions::kernels` at load.
    backend: Backend,
    dtype: DType,
    quant: Option<QuantFormat>,
    /// Bytes per weight of the matrices as kept, for what a decode step reads.
    read_bytes: ReadBytes,
    /// See [`Model::weight_formats`].
    weight_formats: Vec<(&'static str, f64)>,
    /// config.json fields nothing here reads (see [`Model::unrecognized_config_fields`]).
    unrecognized_fields: Vec<String>,
    /// Checkpoint tensors nothing here read (see [`Model::unread_tensors`]).
    unread_tensors: Vec<String>,
}

impl Model {
    /// Loads the hub-layout checkpoint in `dir` (config.json and safetensors), or a GGUF
    /// model: `dir` a GGUF file, the first of a split set, or a folder holding one.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Model> {
        let (arch, weights) = open(dir, opts)?;
        Model::from_weights(arch, &weights, opts)
    }

    /// Builds a model from an already-parsed config and opened weights.
    pub fn from_weights(
        arch: Architecture,
        weights: &Weights,
        opts: &LoadOptions,
    ) -> Result<Model> {
        Model::from_weights_with_progress(arch, weights, opts, |_, _| {})
    }

    /// As [`Model::from_weights`], calling `on_layer(done, total)` after each layer is read
    /// (and converted), for a progress bar: the layers are nearly all of the work.
    pub fn from_weights_with_progress(
        arch: Architecture,
        weights: &Weights,
        opts: &LoadOptions,
        mut on_layer: impl FnMut(usize, usize),
    ) -> Result<Model> {
        let Architecture {
            config: mut cfg,
            names,
            unrecognized_fields,
            skipped,
            ..
        } = arch;
        if let Some(k) = opts.experts_per_token {
            if !cfg.has_experts() {
                return Err(Error::Input(format!(
                    "--experts-per-token {k}: this {} model is dense, it has no experts to route to",
                    cfg.model_type
                )));
            }
            let e = cfg.moe.num_experts;
            // Group-limited routers choose among the kept groups' experts only.
            let choosable = cfg
                .moe
                .router
                .group_limit
                .map_or(e, |g| g.keep * (e / g.groups.max(1)));
            if k == 0 || k > choosable {
                return Err(Error::Input(format!(
                    "--experts-per-token {k} is out of range 1..={choosable} for this model"
                )));
            }
            cfg.moe.router.top_k = k;
        }
        if opts.quant.is_some() && !opts.device.is_cpu() {
            return Err(Error::Input(
                "--quant runs on the CPU only: quantized kernels for other devices are not built"
                    .into(),
            ));
        }
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = weights.get(names.embed, &[v, h])?;
        let untied = weights.contains(names.lm_head) && !cfg.tie_word_embeddings;
        let head_format = head_format(opts.quant);
        let lm_head = match untied {
            true => match weights.quantized(names.lm_head, &[v, h], head_format)? {
                Some(q) => Weight::Quantized(std::sync::Arc::new(q)),
                None => Weight::new(
                    weights.get(names.lm_head, &[v, h])?,
                    head_format,
                    names.lm_head,
                )?,
            },
            // Tied, or a checkpoint that simply has no head: HF ties in both cases.
            false => Weight::new(embed.clone(), head_format, names.lm_head)?,
        };
        let head_bytes = lm_head.bytes_per_weight();
        let lm_head = Linear::from_weight(lm_head, None);
        let backend = Backend::new(&opts.device, opts.dtype, opts.kernels);
        let tally = FormatTally::default();
        let blocks = cfg
            .layers
            .iter()
            .enumerate()
            .map(|(i, &layer)| {
                let reader = LayerReader {
                    weights,
                    names: &names,
                    cfg: &cfg,
                    prefix: format!("{}.{i}", names.layers),
                    quant: opts.quant,
                    tally: &tally,
                };
                let block = reader.block(layer, &backend);
                on_layer(i + 1, cfg.layers.len());
                block
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = load::norm(weights, names.final_norm, h, &cfg)?;
        let skipped: Vec<&str> = skipped.iter().map(|(prefix, _)| prefix.as_str()).collect();
        let unread_tensors = weights.unread(&skipped);
        let embed_scale = match cfg.scales.embedding_in_dtype {
            // Through f32, as HF's buffer holds it before the cast.
            true => Tensor::new(cfg.scales.embedding as f32, &Device::Cpu)?
                .to_dtype(opts.dtype)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?,
            false => cfg.scales.embedding,
        };
        Ok(Model {
            rope: Rope::new(&cfg.rope, cfg.rope_head_dim()),
            global_rope: (cfg.global_attention.as_ref())
                .map(|g| Rope::new(&g.rope, g.attention.head_dim)),
            embed_scale,
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            device: opts.device.clone(),
            backend,
            dtype: opts.dtype,
            quant: opts.quant,
            read_bytes: ReadBytes {
                experts: tally.bytes_per_weight().0,
                other: tally.bytes_per_weight().1,
                head: head_bytes,
            },
            weight_formats: tally.shares(),
            unrecognized_fields,
            unread_tensors,
        })
    }

    /// The fields of config.json that no part of the engine reads: settings of the checkpoint
    /// that may change what it computes and that this model ignores (the command line prints
    /// them as a warning). Empty for a config the family's reader knows whole.
    pub fn unrecognized_config_fields(&self) -> &[String] {
        &self.unrecognized_fields
    }

    /// The checkpoint's tensors that the model did not read, sorted: weights of the checkpoint
    /// that this model ignores (a tensor of a feature the engine does not implement, a name it
    /// does not know), which the command line prints as a warning. The parts a text model
    /// leaves out on purpose (`Architecture::skipped`: a vision tower, multi-token-prediction
    /// layers) are not listed. Empty for a checkpoint read whole, and for random weights.
    pub fn unread_tensors(&self) -> &[String] {
        &self.unread_tensors
    }

    /// The formats the layers' matrices are kept in (a dtype such as `bf16`, or blocks such
    /// as `q4_K`), each with its share of their weights, largest first: a GGUF file's mix.
    pub fn weight_formats(&self) -> &[(&'static str, f64)] {
        &self.weight_formats
    }

    /// The format the weights of matrix products were converted to at load, if any.
    pub fn quant(&self) -> Option<QuantFormat> {
        self.quant
    }

    /// Bytes one decode step of one sequence reads (`ModelConfig::decode_reads`), each kind of
    /// parameter in the format it is kept in, and the linear-attention layers' recurrent state
    /// (`ModelConfig::recurrent_state_bytes`).
    pub fn decode_read_bytes(&self) -> f64 {
        let reads = self.cfg.decode_reads();
        let dense = self.dtype.size_in_bytes() as f64;
        let b = &self.read_bytes;
        let other_matrices = reads.matrices - reads.experts;
        other_matrices as f64 * b.other.unwrap_or(dense)
            + reads.experts as f64 * b.experts.unwrap_or(dense)
            + reads.head as f64 * b.head
            + reads.other as f64 * dense
            + self.cfg.recurrent_state_bytes() as f64
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The backend running the ops (its name is what `moe bench` reports).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> Cache {
        self.new_cache_for(self.cfg.max_position_embeddings)
    }

    /// A cache that holds at most `positions` positions (and never more than the model's
    /// context): a server's sequences, each given a share of memory.
    pub fn new_cache_for(&self, positions: usize) -> Cache {
        let windows = self
            .cfg
            .layers
            .iter()
            .map(|l| match l.attention {
                AttentionKind::Sliding { window } => Some(window),
                AttentionKind::Full | AttentionKind::Linear | AttentionKind::Latent => None,
            })
            .collect();
        Cache::with_windows(windows, positions.min(self.cfg.max_position_embeddings))
    }

    /// Runs `tokens` after whatever `cache` holds; returns f32 logits for every one of them,
    /// (tokens, vocab).
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        self.backend.run(tokens.len(), || {
            let hidden = self.hidden(tokens, cache)?;
            self.logits(&hidden)
        })
    }

    /// Like `forward`, but computes the head for the last token only: (vocab,).
    pub fn forward_last(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        Ok(self.forward_sequences(&mut [(tokens, cache)])?.squeeze(0)?)
    }

    /// One decode step for several sequences at once: `tokens[b]` continues `caches[b]`. Every
    /// layer reads its weights once for the whole batch (the experts any of the tokens chose),
    /// and attention runs per sequence over its own cache. Returns f32 logits (batch, vocab),
    /// the same as `forward` of each token alone up to summation order.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [Cache]) -> Result<Tensor> {
        if tokens.len() != caches.len() {
            return Err(Error::Input(format!(
                "a batch step needs one token per sequence: {} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        let mut seqs: Vec<(&[u32], &mut Cache)> = tokens.chunks(1).zip(caches.iter_mut()).collect();
        self.forward_sequences(&mut seqs)
    }

    /// One pass over several sequences' new tokens, any number each: `seqs[b]` continues its
    /// cache with its tokens (a decode step's one token, a prompt's chunk). Every layer reads
    /// its weights once for all the rows, attention runs per sequence over its own cache.
    /// Returns f32 logits of each sequence's last token, (sequences, vocab): what
    /// `forward_last` of each alone gives, up to summation order. The step of continuous
    /// batching, where prompts are prefilled beside running decodes. When it fails, every
    /// cache is as `forward` leaves one after a failure.
    pub fn forward_sequences(&self, seqs: &mut [(&[u32], &mut Cache)]) -> Result<Tensor> {
        let rows: usize = seqs.iter().map(|(t, _)| t.len()).sum();
        // The last row of each sequence in the stacked hidden states.
        let mut last = Vec::with_capacity(seqs.len());
        let mut end = 0u32;
        for (tokens, _) in seqs.iter() {
            end = u32::try_from(tokens.len())
                .ok()
                .and_then(|n| end.checked_add(n))
                .ok_or_else(|| Error::Input("a step of more than 2^32 tokens".into()))?;
            last.push(end.saturating_sub(1));
        }
        let last = Tensor::new(last.as_slice(), &self.device)?;
        self.backend.run(rows, || {
            let hidden = self.hidden_many(seqs, &mut |_, _| Ok(()))?;
            self.logits(&hidden.index_select(&last, 0)?)
        })
    }

    /// Where the forward of `tokens` from an empty cache first gives a number that is not
    /// finite: "the embedding", "layer N" (its output), "the final norm" or "the head"; `None`
    /// if nowhere. The diagnosis behind an error about non-finite logits: it costs a forward
    /// with a check after each layer, so it runs once the logits are found broken, never on
    /// the way to them.
    pub fn first_non_finite(&self, tokens: &[u32]) -> Result<Option<String>> {
        let mut first: Option<String> = None;
        let mut cache = self.new_cache();
        let mut watch = |stage: Stage, xs: &Tensor| -> Result<()> {
            if first.is_none() && !all_finite(xs)? {
                first = Some(stage.to_string());
            }
            Ok(())
        };
        let hidden = self.backend.run(tokens.len(), || {
            self.hidden_many(&mut [(tokens, &mut cache)], &mut watch)
        })?;
        if first.is_none() {
            let logits = self.backend.run(tokens.len(), || self.logits(&hidden))?;
            if !all_finite(&logits)? {
                first = Some("the head".into());
            }
        }
        Ok(first)
    }

    /// The final-normed hidden states, (tokens, hidden).
    fn hidden(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        self.hidden_many(&mut [(tokens, cache)], &mut |_, _| Ok(()))
    }

    /// The final-normed hidden states of several sequences' new tokens, one sequence's rows
    /// after another: (Σ tokens, hidden). `watch` sees the output of each stage.
    fn hidden_many(
        &self,
        seqs: &mut [(&[u32], &mut Cache)],
        watch: &mut dyn FnMut(Stage, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        if seqs.is_empty() {
            return Err(Error::Input("the batch is empty".into()));
        }
        // Each sequence's rotary tables (and the global layers' own), at its own positions.
        let mut tables = Vec::with_capacity(seqs.len());
        for (tokens, cache) in seqs.iter() {
            self.check_tokens(tokens, cache)?;
            let (t, start) = (tokens.len(), cache.position());
            let table = |rope: &Rope| rope.cos_sin(start, t, self.dtype, &self.device);
            let global = self.global_rope.as_ref().map(table).transpose()?;
            tables.push((table(&self.rope)?, global));
        }
        let mut ids: Vec<u32> = seqs.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        if let Some(EmbeddedAs {
            ids: placeholders,
            row,
        }) = &self.cfg.embedded_as
        {
            ids.iter_mut()
                .filter(|id| placeholders.contains(id))
                .for_each(|id| *id = *row);
        }
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let mut xs = block::scaled(self.embed.index_select(&ids, 0)?, self.embed_scale)?;
        watch(Stage::Embedding, &xs)?;
        let mut parts: Vec<Sequence> = seqs
            .iter_mut()
            .zip(&tables)
            .map(|((tokens, cache), ((cos, sin), global))| Sequence {
                tokens: tokens.len(),
                step: Step {
                    cos,
                    sin,
                    global: global.as_ref().map(|(cos, sin)| (cos, sin)),
                },
                cache,
            })
            .collect();
        for (i, block) in self.blocks.iter().enumerate() {
            match block.forward(&xs, &mut parts, i, self.cfg.scales.residual, &self.backend) {
                Ok(next) => {
                    xs = next;
                    watch(Stage::Layer(i), &xs)?;
                }
                Err(e) => {
                    // Keys and values written past the position are overwritten by the next
                    // call; a recurrent state that took these tokens in some layers is not.
                    for seq in parts.iter_mut() {
                        seq.cache.forward_failed();
                    }
                    return Err(e);
                }
            }
        }
        for seq in parts {
            seq.cache.advance(seq.tokens)?;
        }
        let normed = self.norm.forward(&xs)?;
        watch(Stage::FinalNorm, &normed)?;
        Ok(normed)
    }

    /// hidden: (tokens, hidden) -> f32 logits (tokens, vocab)
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let mut logits = self.lm_head.forward(hidden, &self.backend)?;
        let divisor = self.cfg.scales.logits_divisor;
        if divisor != 1.0 {
            logits = (logits / divisor)?;
        }
        let logits = logits.to_dtype(DType::F32)?;
        match self.cfg.scales.logit_softcap {
            // In f32 (HF: in the compute dtype, before its logits are widened).
            Some(cap) => Ok(((logits / cap)?.tanh()? * cap)?),
            None => Ok(logits),
        }
    }

    /// Refuses what would fail deep inside the forward: no tokens, ids past the vocabulary,
    /// or more positions than the model was made for.
    fn check_tokens(&self, tokens: &[u32], cache: &Cache) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Input("the token list is empty".into()));
        }
        let vocab = self.cfg.vocab_size;
        if let Some((i, id)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= vocab)
        {
            return Err(Error::Input(format!(
                "token id {id} at position {i} is out of range (vocab_size = {vocab})"
            )));
        }
        let end = cache.position() + tokens.len();
        let max = self.cfg.max_position_embeddings;
        if end > max {
            return Err(Error::Input(format!(
                "{end} positions exceed the model's context of {max} (max_position_embeddings)"
            )));
        }
        Ok(())
    }
}

/// A stage of the forward whose output [`Model::first_non_finite`] checks.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Embedding,
    Layer(usize),
    FinalNorm,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Embedding => write!(f, "the embedding"),
            Stage::Layer(i) => write!(f, "layer {i}"),
            Stage::FinalNorm => write!(f, "the final norm"),
        }
    }
}

/// Whether every value of `xs` is finite.
fn all_finite(xs: &Tensor) -> Result<bool> {
    let values = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(values.iter().all(|v| v.is_finite()))
}

/// The architecture and weights at `path`: a hub-layout checkpoint folder or a GGUF model.
pub fn open(path: &Path, opts: &LoadOptions) -> Result<(Architecture, Weights)> {
    if crate::gguf::holds_gguf(path) {
        let file = crate::gguf::Gguf::open(path)?;
        let (arch, unpermute) = crate::gguf::architecture(&file)?;
        let weights = Weights::from_gguf(file, unpermute, opts.dtype, &opts.device)?
            .checking(opts.check_weights);
        return Ok((arch, weights));
    }
    let arch = arch::load(path)?;
    let weights = Weights::open(path, opts.dtype, &opts.device)?
        .with_fp8_blocks(arch.fp8_block)
        .checking(opts.check_weights);
    Ok((arch, weights))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_library_reports_config_fields_it_does_not_read() {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_moe-a");
        let dir = tempfile::tempdir().unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
                .unwrap();
        config["partial_rotary_factor"] = 0.5.into();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        std::fs::copy(
            fixture.join("model.safetensors"),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let opts = super::LoadOptions::default();
        let model = super::Model::load(dir.path(), &opts).unwrap();
        assert_eq!(
            model.unrecognized_config_fields(),
            ["partial_rotary_factor"]
        );
        let clean = super::Model::load(&fixture, &opts).unwrap();
        assert!(clean.unrecognized_config_fields().is_empty());
    }

    #[test]
    fn models_are_shared_between_threads_and_caches_move() {
        fn shared<T: Send + Sync>() {}
        shared::<super::Model>();
        shared::<super::Cache>();
    }
}

/// Bytes per weight the matrices are kept in, by kind (averaged over the layers).
#[derive(Debug, Clone, Copy)]
struct ReadBytes {
    experts: Option<f64>,
    other: Option<f64>,
    head: f64,
}
