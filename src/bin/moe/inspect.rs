//! `moe inspect`: what a checkpoint is, read from its config.json alone.

use anyhow::Result;
use moe_runtime::arch;
use moe_runtime::spec::{AttentionKind, FfnKind};

use crate::common::Common;

pub fn run(common: &Common) -> Result<()> {
    let opts = common.load_options()?;
    let dir = common.model.dir()?;
    let arch = arch::load(&dir)?;
    let c = &arch.config;
    let a = &c.attention;
    let m = &c.moe;
    let sparse = c.layers.iter().filter(|l| l.ffn == FfnKind::Sparse).count();
    let windows: Vec<usize> = c
        .layers
        .iter()
        .filter_map(|l| match l.attention {
            AttentionKind::Sliding { window } => Some(window),
            AttentionKind::Full => None,
        })
        .collect();
    let (total, active) = c.parameter_counts();
    let bytes = opts.dtype.size_in_bytes() as f64;
    // Experts a checkpoint keeps in MXFP4 stay so on the CPU: 17 bytes per 32 weights.
    let mxfp4 = arch.quantized_experts;
    println!("model          {}", dir.display());
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
    if a.sinks {
        println!("sinks          one learned logit per head in every softmax");
    }
    match &c.rope.yarn {
        None => println!("rope           theta {}", c.rope.theta),
        Some(y) => println!(
            "rope           theta {}, YaRN x{} from {} positions (attention factor {:.4})",
            c.rope.theta, y.factor, y.original_max_position_embeddings, y.attention_factor
        ),
    }
    if let Some(w) = windows.first() {
        println!(
            "sliding        {} of {} layers over {w} positions",
            windows.len(),
            c.num_layers()
        );
    }
    println!(
        "experts        {} routed, top-{}, ffn {}{}",
        m.num_experts,
        m.router.top_k,
        m.expert_intermediate_size,
        m.shared_expert.as_ref().map_or(String::new(), |s| format!(
            ", shared expert ffn {}",
            s.intermediate_size
        ))
    );
    let r = &m.router;
    println!(
        "router         {:?} {:?}{}{}{}{}{}",
        r.scoring,
        r.selection,
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
        }
    );
    println!("activation     {:?}", c.activation);
    println!("vocab          {}", c.vocab_size);
    println!("context        {}", c.max_position_embeddings);
    println!(
        "parameters     {:.3}M total, {:.3}M active per token",
        total as f64 / 1e6,
        active as f64 / 1e6
    );
    let expert_params = if mxfp4 {
        let per_expert = 3 * c.hidden_size as u128 * m.expert_intermediate_size as u128;
        per_expert * m.num_experts as u128 * sparse as u128
    } else {
        0
    };
    let memory = (total - expert_params) as f64 * bytes + expert_params as f64 * 17.0 / 32.0;
    println!(
        "memory         {:.1} MiB of weights in {:?}{}",
        memory / (1 << 20) as f64,
        opts.dtype,
        if mxfp4 { ", experts in MXFP4" } else { "" }
    );
    if !arch.unrecognized_fields.is_empty() {
        println!("unused fields  {}", arch.unrecognized_fields.join(", "));
    }
    Ok(())
}
