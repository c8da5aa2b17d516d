//! `moe inspect`: what a checkpoint is, read from its config.json alone.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use moe_runtime::arch;
use moe_runtime::gguf::{self, GgmlType, Gguf};
use moe_runtime::spec::{AttentionKind, FfnKind};

use crate::common::Common;
use crate::output;

pub fn run(common: &Common) -> Result<()> {
    let path = Path::new(&common.model.model);
    let opts = common.load_options()?;
    let mut out = output::stdout();
    let mut file = None;
    let arch = if gguf::holds_gguf(path) {
        let gguf = file.insert(Gguf::open(path)?);
        gguf_file(&mut out, gguf)?;
        match gguf::architecture(gguf) {
            Ok((arch, _)) => arch,
            Err(e) => {
                writeln!(out, "loadable       no: {e}")?;
                gguf_metadata(&mut out, gguf)?;
                return Ok(());
            }
        }
    } else {
        let dir = common.model.dir()?;
        writeln!(out, "model          {}", dir.display())?;
        arch::load(&dir)?
    };
    let c = &arch.config;
    let a = &c.attention;
    let m = &c.moe;
    let sparse = c.layers.iter().filter(|l| l.ffn.routes()).count();
    let beside = c
        .layers
        .iter()
        .filter(|l| l.ffn == FfnKind::DenseAndSparse)
        .count();
    let windows: Vec<usize> = c
        .layers
        .iter()
        .filter_map(|l| match l.attention {
            AttentionKind::Sliding { window } => Some(window),
            AttentionKind::Full | AttentionKind::Linear | AttentionKind::Latent => None,
        })
        .collect();
    let linear = c
        .layers
        .iter()
        .filter(|l| l.attention == AttentionKind::Linear)
        .count();
    let (total, active) = c.parameter_counts();
    let bytes = opts.dtype.size_in_bytes() as f64;
    // Experts a checkpoint keeps in MXFP4 stay so on the CPU: 17 bytes per 32 weights.
    let mxfp4 = arch.quantized_experts;
    writeln!(out, "architecture   {}", c.model_type)?;
    writeln!(
        out,
        "layers         {} ({} sparse, {} dense)",
        c.num_layers(),
        sparse,
        c.num_layers() - sparse
    )?;
    writeln!(out, "hidden         {}", c.hidden_size)?;
    if c.latent_attention.is_none() {
        writeln!(
            out,
            "attention      {} heads, {} kv heads, head_dim {}, qk norm {:?}{}",
            a.num_heads,
            a.num_kv_heads,
            a.head_dim,
            a.qk_norm,
            if c.global_attention.is_some() {
                " (the sliding layers)"
            } else {
                ""
            }
        )?;
    }
    if let Some(g) = &c.global_attention {
        let g = &g.attention;
        writeln!(
            out,
            "global         full-attention layers: {} heads, {} kv heads, head_dim {}{}",
            g.num_heads,
            g.num_kv_heads,
            g.head_dim,
            if g.k_eq_v { ", keys as values" } else { "" }
        )?;
    }
    if a.output_gate {
        writeln!(
            out,
            "output gate    sigmoid(gate) from the q projection on every attention output"
        )?;
    }
    if a.sinks {
        writeln!(
            out,
            "sinks          one learned logit per head in every softmax"
        )?;
    }
    if !arch.skipped.is_empty() {
        let parts: Vec<String> = arch
            .skipped
            .iter()
            .map(|(prefix, what)| format!("{what} ({prefix}*)"))
            .collect();
        writeln!(
            out,
            "not loaded     {}: text generation does not use them",
            parts.join(", ")
        )?;
    }
    if let Some(l) = &c.linear_attention {
        writeln!(
            out,
            "linear         {linear} of {} layers Gated DeltaNet: {} key heads of {}, {} value \
             heads of {}, conv kernel {}",
            c.num_layers(),
            l.key_heads,
            l.key_head_dim,
            l.value_heads,
            l.value_head_dim,
            l.conv_kernel
        )?;
    }
    if let Some(l) = &c.latent_attention {
        writeln!(
            out,
            "latent         {} heads over one cached latent of {} and a shared rotary key of {}; \
             queries {}, keys {} + {}, values {}",
            a.num_heads,
            l.kv_lora_rank,
            l.rope_dim,
            l.q_lora_rank
                .map_or("direct".to_string(), |r| format!("through rank {r}")),
            l.nope_dim,
            l.rope_dim,
            l.v_dim
        )?;
    }
    let per_position = c.cached_numbers_per_position();
    if per_position > 0 {
        let expanded = c.latent_attention.as_ref().map_or(String::new(), |l| {
            let layers = c
                .layers
                .iter()
                .filter(|x| x.attention == AttentionKind::Latent);
            let keys_values = layers.count() * a.num_heads * (l.qk_dim() + l.v_dim);
            format!(" (expanded keys and values would be {keys_values})")
        });
        writeln!(
            out,
            "cache          {per_position} numbers per position over all layers, {:.1} KiB in \
             f32{expanded}",
            per_position as f64 * 4.0 / 1024.0
        )?;
    }
    if let Some([rows, cols]) = arch.fp8_block {
        writeln!(
            out,
            "fp8            F8_E4M3 weights with a scale per {rows}x{cols} block, converted to \
             {:?} at load",
            opts.dtype
        )?;
    }
    match &c.rope.yarn {
        None if c.rope.partial_rotary_factor < 1.0 => writeln!(
            out,
            "rope           theta {}, on {} of {} dimensions per head",
            c.rope.theta,
            c.rope.rotary_dim(c.rope_head_dim()),
            c.rope_head_dim()
        )?,
        None => writeln!(out, "rope           theta {}", c.rope.theta)?,
        Some(y) => writeln!(
            out,
            "rope           theta {}, YaRN x{} from {} positions (attention factor {:.4})",
            c.rope.theta, y.factor, y.original_max_position_embeddings, y.attention_factor
        )?,
    }
    if let Some(g) = &c.global_attention {
        let r = &g.rope;
        writeln!(
            out,
            "global rope    theta {}, {} of {} dimension pairs turning{}",
            r.theta,
            r.turning_pairs(g.attention.head_dim),
            g.attention.head_dim / 2,
            if r.proportional {
                " (proportional)"
            } else {
                ""
            }
        )?;
    }
    if let Some(w) = windows.first() {
        writeln!(
            out,
            "sliding        {} of {} layers over {w} positions",
            windows.len(),
            c.num_layers()
        )?;
    }
    if c.has_experts() {
        writeln!(
            out,
            "experts        {} routed, top-{}, ffn {}{}",
            m.num_experts,
            m.router.top_k,
            m.expert_intermediate_size,
            m.shared_expert.as_ref().map_or(String::new(), |s| format!(
                ", shared expert ffn {}",
                s.intermediate_size
            ))
        )?;
        if beside > 0 {
            writeln!(
                out,
                "dense beside   {beside} sparse layers also run a dense MLP of ffn {}, summed \
                 with the experts",
                c.dense_intermediate_size
            )?;
        }
        let r = &m.router;
        writeln!(
            out,
            "router         {:?} {:?}{}{}{}{}{}{}{}",
            r.scoring,
            r.selection,
            if m.router_input_scale {
                ", reads the residual normed and scaled"
            } else {
                ""
            },
            if r.logit_bias { ", with a bias" } else { "" },
            if r.renormalise { ", renormalised" } else { "" },
            r.group_limit.map_or(String::new(), |g| format!(
                ", best {} of {} groups",
                g.keep, g.groups
            )),
            if r.correction_bias {
                ", selection bias"
            } else {
                ""
            },
            if r.scale != 1.0 {
                format!(", scale {}", r.scale)
            } else {
                String::new()
            },
            if m.per_expert_scale {
                ", a learned scale per expert"
            } else {
                ""
            }
        )?;
    } else {
        writeln!(
            out,
            "experts        none: a dense model, one MLP of width {} in every layer",
            c.dense_intermediate_size
        )?;
    }
    writeln!(out, "activation     {:?}", c.activation)?;
    writeln!(out, "vocab          {}", c.vocab_size)?;
    writeln!(out, "context        {}", c.max_position_embeddings)?;
    writeln!(
        out,
        "parameters     {:.3}M total, {:.3}M active per token",
        total as f64 / 1e6,
        active as f64 / 1e6
    )?;
    let expert_params = if mxfp4 {
        let per_expert = 3 * c.hidden_size as u128 * m.expert_intermediate_size as u128;
        per_expert * m.num_experts as u128 * sparse as u128
    } else {
        0
    };
    let memory = (total - expert_params) as f64 * bytes + expert_params as f64 * 17.0 / 32.0;
    match &file {
        // On the CPU a GGUF's blocks of the kernels' formats stay as stored, read in place or
        // (on x86) interleaved for the group tiles in a copy; the rest is read into the
        // compute dtype.
        Some(file) if opts.device.is_cpu() && opts.quant.is_none() => {
            // Bytes read in place, bytes interleaved in a copy, values read as numbers.
            let (mut mapped, mut copied, mut numbers) = (0usize, 0usize, 0usize);
            for t in file.tensors() {
                match moe_runtime::weights::cpu_format(t.ggml_type) {
                    Some(f) if moe_runtime::quant::interleaves(f, &t.shape()) => {
                        copied += t.bytes()
                    }
                    Some(_) => mapped += t.bytes(),
                    None => numbers += t.elements(),
                }
            }
            let mib = |b: f64| b / (1 << 20) as f64;
            writeln!(
                out,
                "memory         {:.1} MiB of weights: {:.1} MiB of blocks read in place, {:.1} \
                 MiB interleaved in groups of rows (a copy), {:.1} MiB in {:?}",
                mib((copied + mapped) as f64 + numbers as f64 * bytes),
                mib(mapped as f64),
                mib(copied as f64),
                mib(numbers as f64 * bytes),
                opts.dtype
            )?;
        }
        _ => writeln!(
            out,
            "memory         {:.1} MiB of weights in {:?}{}",
            memory / (1 << 20) as f64,
            opts.dtype,
            if mxfp4 { ", experts in MXFP4" } else { "" }
        )?,
    }
    if !arch.unrecognized_fields.is_empty() {
        writeln!(
            out,
            "unused fields  {}",
            arch.unrecognized_fields.join(", ")
        )?;
    }
    if let Some(file) = &file {
        gguf_metadata(&mut out, file)?;
    }
    Ok(())
}

/// A GGUF file as it is: its metadata, and its tensors by type with the bytes each type holds.
fn gguf_file(out: &mut impl Write, file: &Gguf) -> Result<()> {
    let paths: Vec<_> = file.files().collect();
    writeln!(out, "model          {}", file.path().display())?;
    if paths.len() > 1 {
        writeln!(out, "files          {} (a split set)", paths.len())?;
    }
    writeln!(
        out,
        "format         GGUF v{}, architecture {}",
        file.version(),
        file.architecture()?
    )?;
    let mut by_type: BTreeMap<GgmlType, (usize, usize, usize)> = BTreeMap::new();
    for t in file.tensors() {
        let entry = by_type.entry(t.ggml_type).or_default();
        *entry = (entry.0 + 1, entry.1 + t.elements(), entry.2 + t.bytes());
    }
    let (values, bytes) = by_type
        .values()
        .fold((0, 0), |(v, b), e| (v + e.1, b + e.2));
    writeln!(
        out,
        "tensors        {}, {:.3}M values in {:.1} MiB ({:.2} bits per value)",
        file.tensors().len(),
        values as f64 / 1e6,
        bytes as f64 / (1 << 20) as f64,
        8.0 * bytes as f64 / values.max(1) as f64
    )?;
    for (ty, (count, values, bytes)) in &by_type {
        writeln!(
            out,
            "  {:<12} {count:>5} tensors, {:>10.1} MiB ({:.2} bits per value)",
            ty.name(),
            *bytes as f64 / (1 << 20) as f64,
            8.0 * *bytes as f64 / (*values).max(1) as f64
        )?;
    }
    Ok(())
}

fn gguf_metadata(out: &mut impl Write, file: &Gguf) -> std::io::Result<()> {
    writeln!(out, "metadata")?;
    for (key, value) in file.metadata() {
        writeln!(out, "  {key} = {value}")?;
    }
    Ok(())
}
