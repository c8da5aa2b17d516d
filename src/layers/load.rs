//! Building a `Model` from a checkpoint: every tensor fetched by its hub name with the shape the
//! config implies, so a misshapen or missing tensor is reported by name before any forward.

use std::cell::Cell;
use std::collections::BTreeMap;

use candle_core::Tensor;

use super::attention::{Attention, AttentionWeights};
use super::block::{Block, DenseAndSparse, FeedForward, Mixer};
use super::linear::Linear;
use super::linear_attention::LinearAttention;
use super::mlp::Mlp;
use super::moe::{Router, SharedExpert, SparseMoe};
use super::norm::Norm;
use crate::arch::{join, LinearProjections, TensorNames};
use crate::error::Result;
use crate::ops::{Backend, Experts};
use crate::quant::{QMatrix, QuantFormat, Weight};
use crate::spec::{AttentionKind, FfnKind, LayerSpec, ModelConfig, QkNorm};
use crate::weights::Weights;

mod latent;

/// Reads tensors of one layer by their names relative to the layer prefix.
pub struct LayerReader<'a> {
    pub weights: &'a Weights,
    pub names: &'a TensorNames,
    pub cfg: &'a ModelConfig,
    pub prefix: String,
    /// The format of the weights of matrix products (`None`: the compute dtype).
    pub quant: Option<QuantFormat>,
    pub tally: &'a FormatTally,
}

/// The bytes per weight the matrices were kept in, averaged over every layer's (a GGUF mixes
/// formats per tensor): what a decode step reads, by kind.
#[derive(Default)]
pub struct FormatTally {
    /// (bytes, weights) of the routed experts, and of every other matrix of the layers.
    experts: Cell<(f64, f64)>,
    other: Cell<(f64, f64)>,
    /// Weights of the layers' matrices by the format they are kept in.
    formats: std::cell::RefCell<BTreeMap<&'static str, f64>>,
}

impl FormatTally {
    fn add(
        cell: &Cell<(f64, f64)>,
        formats: &std::cell::RefCell<BTreeMap<&'static str, f64>>,
        w: &Weight,
    ) {
        let n: usize = w.dims().iter().product();
        let (bytes, weights) = cell.get();
        cell.set((bytes + n as f64 * w.bytes_per_weight(), weights + n as f64));
        *formats.borrow_mut().entry(w.format_name()).or_default() += n as f64;
    }

    fn add_expert(&self, w: &Weight) {
        FormatTally::add(&self.experts, &self.formats, w);
    }

    fn add_other(&self, w: &Weight) {
        FormatTally::add(&self.other, &self.formats, w);
    }

    /// Bytes per weight of (the routed experts, the other matrices); `None` for a kind absent.
    pub fn bytes_per_weight(&self) -> (Option<f64>, Option<f64>) {
        let mean = |(bytes, weights): (f64, f64)| (weights > 0.0).then(|| bytes / weights);
        (mean(self.experts.get()), mean(self.other.get()))
    }

    /// Each format the layers' matrices are kept in with its share of their weights, largest
    /// first.
    pub fn shares(&self) -> Vec<(&'static str, f64)> {
        let formats = self.formats.borrow();
        let total: f64 = formats.values().sum();
        let mut shares: Vec<_> = formats.iter().map(|(&f, &n)| (f, n / total)).collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        shares
    }
}

impl LayerReader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<candle_core::Tensor> {
        self.weights.get(&format!("{}.{name}", self.prefix), shape)
    }

    fn norm(&self, name: &str, size: usize) -> Result<Norm> {
        norm(
            self.weights,
            &format!("{}.{name}", self.prefix),
            size,
            self.cfg,
        )
    }

    /// A small tensor in f32 from its stored values.
    fn get_f32(&self, name: &str, shape: &[usize]) -> Result<candle_core::Tensor> {
        let full = format!("{}.{name}", self.prefix);
        self.weights.get_as(&full, shape, candle_core::DType::F32)
    }

    /// The weight of a matrix product, in the format asked for (a GGUF's quantized tensor
    /// kept as it is where the CPU reads its format).
    fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let full = format!("{}.{name}", self.prefix);
        let weight = match self.weights.quantized(&full, shape, self.quant)? {
            Some(q) => Weight::Quantized(std::sync::Arc::new(q)),
            None => Weight::new(self.weights.get(&full, shape)?, self.quant, &full)?,
        };
        self.tally.add_other(&weight);
        Ok(weight)
    }

    /// `{proj}.weight` of shape (out, in), and `{proj}.bias` (out) when `bias`.
    fn linear(&self, proj: &str, (out, inp): (usize, usize), bias: bool) -> Result<Linear> {
        let w = self.weight(&format!("{proj}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.get(&format!("{proj}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::from_weight(w, b))
    }

    /// A SiLU-gated MLP under `prefix` with projections `[gate, up, down]`.
    fn mlp(&self, prefix: &str, [gate, up, down]: [&str; 3], intermediate: usize) -> Result<Mlp> {
        let h = self.cfg.hidden_size;
        let proj = |name: &str, shape| self.linear(&join(prefix, name), shape, false);
        Ok(Mlp::new(
            proj(gate, (intermediate, h))?,
            proj(up, (intermediate, h))?,
            proj(down, (h, intermediate))?,
            self.cfg.activation,
        ))
    }

    fn attention(&self, layer: LayerSpec) -> Result<Attention> {
        let (a, _) = self.cfg.attention_of(layer.attention);
        let global_rope =
            layer.attention == AttentionKind::Full && self.cfg.global_attention.is_some();
        let n = self.names;
        let h = self.cfg.hidden_size;
        let (q_out, kv_out) = (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim);
        // A gated projection: each head's query rows, then its gate rows.
        let q_rows = if a.output_gate { 2 * q_out } else { q_out };
        let qk_norm = match a.qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some((
                self.norm(n.q_norm, a.head_dim)?,
                self.norm(n.k_norm, a.head_dim)?,
            )),
            QkNorm::Projection => Some((self.norm(n.q_norm, q_out)?, self.norm(n.k_norm, kv_out)?)),
        };
        let weights = AttentionWeights {
            q: self.linear(n.q, (q_rows, h), a.qkv_bias)?,
            k: self.linear(n.k, (kv_out, h), a.qkv_bias)?,
            v: match a.k_eq_v {
                true => None,
                false => Some(self.linear(n.v, (kv_out, h), a.qkv_bias)?),
            },
            o: self.linear(n.o, (h, q_out), a.o_bias)?,
            qk_norm,
            v_norm: match a.v_norm {
                true => Some(Norm::new(
                    Tensor::ones(a.head_dim, self.weights.dtype(), self.weights.device())?,
                    self.cfg.rms_norm_eps,
                )),
                false => None,
            },
            // As the compute dtype holds them (HF adds them to scores in that dtype), kept f32.
            sinks: match a.sinks {
                true => Some(
                    self.get(n.sinks, &[a.num_heads])?
                        .to_dtype(candle_core::DType::F32)?
                        .to_vec1::<f32>()?,
                ),
                false => None,
            },
        };
        Ok(Attention::new(weights, a, layer.attention, global_rope))
    }

    /// Gated DeltaNet, its input projections joined in the order `LinearAttention` reads
    /// (q, k, v, z, b, a, each head-major) whatever order the checkpoint keeps them in.
    fn linear_attention(&self) -> Result<LinearAttention> {
        let Some(c) = self.cfg.linear_attention.clone() else {
            return Err(crate::error::Error::Input(
                "a linear-attention layer without a linear attention shape".into(),
            ));
        };
        let n = &self.names.linear_attn;
        let h = self.cfg.hidden_size;
        let (nk, nv, dk, dv) = (c.key_heads, c.value_heads, c.key_head_dim, c.value_head_dim);
        let name = |part: &str| join(n.prefix, part);
        let get = |part: &str, rows: usize| self.get(&format!("{}.weight", name(part)), &[rows, h]);
        let joined = match n.projections {
            LinearProjections::Split { qkv, z, b, a } => candle_core::Tensor::cat(
                &[
                    get(qkv, c.conv_dim())?,
                    get(z, nv * dv)?,
                    get(b, nv)?,
                    get(a, nv)?,
                ],
                0,
            )?,
            LinearProjections::Grouped { qkvz, ba } => {
                // Per key head: q, k, then the v and z rows of its `group` value heads; b and
                // a likewise.
                let group = nv / nk;
                let qkvz_parts = [dk, dk, group * dv, group * dv];
                let qkvz_rows = nk * qkvz_parts.iter().sum::<usize>();
                let qkvz = get(qkvz, qkvz_rows)?;
                let qkvz = qkvz.index_select(&regrouped(nk, &qkvz_parts, qkvz.device())?, 0)?;
                let ba = get(ba, 2 * nv)?;
                let ba = ba.index_select(&regrouped(nk, &[group, group], ba.device())?, 0)?;
                candle_core::Tensor::cat(&[qkvz, ba], 0)?
            }
        };
        let in_name = format!("{}.{} (input projections)", self.prefix, n.prefix);
        let in_proj = Weight::new(joined, self.quant, &in_name)?;
        self.tally.add_other(&in_proj);
        let a_log = self.get_f32(&name(n.a_log), &[nv])?;
        Ok(LinearAttention {
            in_proj: Linear::from_weight(in_proj, None),
            conv: self
                .get_f32(&name(n.conv), &[c.conv_dim(), 1, c.conv_kernel])?
                .reshape((c.conv_dim(), c.conv_kernel))?
                .t()?
                .contiguous()?,
            neg_a: a_log.exp()?.neg()?,
            dt_bias: self.get_f32(&name(n.dt_bias), &[nv])?,
            norm: self.get_f32(&name(n.norm), &[dv])?,
            out_proj: self.linear(&name(n.out), (h, nv * dv), false)?,
            eps: self.cfg.rms_norm_eps,
            cfg: c,
        })
    }

    fn sparse_moe(&self, backend: &Backend) -> Result<SparseMoe> {
        let n = self.names;
        let m = &self.cfg.moe;
        let (e, i, h) = (
            m.num_experts,
            m.expert_intermediate_size,
            self.cfg.hidden_size,
        );
        let moe = |name: &str| join(n.moe, name);
        // The router stays in the compute dtype whatever `quant` says: it is small, and
        // rounding its scores would change which experts run. Its selection bias is read in
        // f32 from the stored values (HF keeps it in f32): its entries differ by little, and
        // rounding them to bf16 would change the choice.
        let spec = m.router;
        let router_bias = match spec.logit_bias {
            true if spec.f32_logits => Some(self.get_f32(&moe(n.router_bias), &[e])?),
            true => Some(self.get(&moe(n.router_bias), &[e])?),
            false => None,
        };
        // Kept in f32 where the family computes its logits in f32 (read from the stored values,
        // so no step converts it again).
        let router_weight = match spec.f32_logits {
            true => self.get_f32(&moe(n.router), &[e, h])?,
            false => self.get(&moe(n.router), &[e, h])?,
        };
        let b = &n.branches;
        let router = Router {
            linear: Linear::new(router_weight, router_bias),
            spec,
            correction: match spec.correction_bias {
                true => Some(self.weights.get_as(
                    &join(&self.prefix, &moe(n.router_correction_bias)),
                    &[e],
                    candle_core::DType::F32,
                )?),
                false => None,
            },
            // A weightless RMSNorm times the scale and hidden^-0.5: one norm whose weight is
            // their product.
            input_norm: match m.router_input_scale {
                true => {
                    let scale = self.get(&moe(b.router_input_scale), &[h])?;
                    let weight = (scale * (h as f64).powf(-0.5))?;
                    Some(Norm::new(weight, self.cfg.rms_norm_eps))
                }
                false => None,
            },
            // As the compute dtype holds it (HF multiplies the f32 weights by the parameter).
            expert_scale: match m.per_expert_scale {
                true => Some(
                    self.get(&moe(b.per_expert_scale), &[e])?
                        .to_dtype(candle_core::DType::F32)?,
                ),
                false => None,
            },
        };
        let prefix = join(&self.prefix, n.moe);
        let mut experts = match self.kept_experts(&prefix, (e, i, h))? {
            Some(experts) => experts,
            None => {
                let (gate_up, down) = self.weights.experts(n, &prefix, (e, i, h))?;
                Experts::new(
                    Weight::new(gate_up, self.quant, &format!("{prefix} experts gate/up"))?,
                    Weight::new(down, self.quant, &format!("{prefix} experts down"))?,
                )
            }
        };
        self.tally.add_expert(&experts.gate_up);
        if let Some(up) = &experts.up {
            self.tally.add_expert(up);
        }
        self.tally.add_expert(&experts.down);
        if m.expert_bias {
            // In the compute dtype's precision, as HF holds them, then in an f32 tensor, the
            // form the kernels read.
            let (gate_up, down) = self.weights.expert_biases(n, &prefix, (e, i, h))?;
            experts.gate_up_bias = Some(gate_up.to_dtype(candle_core::DType::F32)?);
            experts.down_bias = Some(down.to_dtype(candle_core::DType::F32)?);
        }
        let shared = match &m.shared_expert {
            None => None,
            Some(s) => Some(SharedExpert {
                mlp: self.mlp(
                    &moe(n.shared_expert),
                    n.shared_expert_projs
                        .unwrap_or([n.mlp_gate, n.mlp_up, n.mlp_down]),
                    s.intermediate_size,
                )?,
                gate: if s.gated {
                    Some(Linear::new(
                        self.get(&moe(n.shared_expert_gate), &[1, h])?,
                        None,
                    ))
                } else {
                    None
                },
            }),
        };
        Ok(SparseMoe {
            router,
            backend: backend.for_experts(&experts, self.cfg.activation),
            experts,
            activation: self.cfg.activation,
            shared,
        })
    }

    /// Experts kept in the quantized format the checkpoint stores them in: gpt-oss's MXFP4 (no
    /// upcast: gpt-oss-20b's experts stay 4.25 bits a weight) or a GGUF's blocks in any format
    /// the CPU kernels read (in place from the mapped file), where the weights live on the CPU
    /// and `--quant` asks for that format or nothing. Elsewhere (a GPU, another `--quant`)
    /// they are dequantized.
    fn kept_experts(&self, prefix: &str, dims: (usize, usize, usize)) -> Result<Option<Experts>> {
        let keep =
            self.weights.device().is_cpu() && matches!(self.quant, None | Some(QuantFormat::Mxfp4));
        let mxfp4 = match keep {
            true => self.weights.mxfp4_experts(self.names, prefix, dims)?,
            false => None,
        };
        let quantized = |m: QMatrix| Weight::Quantized(std::sync::Arc::new(m));
        if let Some((gate_up, down)) = mxfp4 {
            return Ok(Some(Experts::new(quantized(gate_up), quantized(down))));
        }
        let kept = self
            .weights
            .quantized_experts(self.names, prefix, dims, self.quant)?;
        Ok(kept.map(|[gate, up, down]| {
            Experts::separate(quantized(gate), quantized(up), quantized(down))
        }))
    }

    pub fn block(&self, layer: LayerSpec, backend: &Backend) -> Result<Block> {
        let h = self.cfg.hidden_size;
        let (n, b) = (self.names, &self.names.branches);
        let dense_mlp = || {
            self.mlp(
                n.dense_mlp,
                [n.mlp_gate, n.mlp_up, n.mlp_down],
                self.cfg.dense_intermediate_size,
            )
        };
        let ffn = match layer.ffn {
            FfnKind::Dense => FeedForward::Dense(dense_mlp()?),
            FfnKind::Sparse => FeedForward::Sparse(Box::new(self.sparse_moe(backend)?)),
            FfnKind::DenseAndSparse => FeedForward::DenseAndSparse(Box::new(DenseAndSparse {
                mlp: dense_mlp()?,
                mlp_post_norm: self.norm(b.dense_post_norm, h)?,
                moe: self.sparse_moe(backend)?,
                experts_pre_norm: self.norm(b.experts_pre_norm, h)?,
                experts_post_norm: self.norm(b.experts_post_norm, h)?,
            })),
        };
        let attn = match layer.attention {
            AttentionKind::Linear => Mixer::Linear(self.linear_attention()?),
            AttentionKind::Latent => Mixer::Latent(Box::new(self.latent_attention()?)),
            _ => Mixer::Attention(Box::new(self.attention(layer)?)),
        };
        let post_norms = match self.cfg.sandwich_norms {
            true => Some((
                self.norm(b.post_attn_norm, h)?,
                self.norm(b.post_ffn_norm, h)?,
            )),
            false => None,
        };
        // As the compute dtype holds it (HF multiplies by the buffer in that dtype).
        let output_scale = match self.cfg.layer_scalar {
            true => Some(
                self.get(b.layer_scalar, &[1])?
                    .to_dtype(candle_core::DType::F64)?
                    .squeeze(0)?
                    .to_scalar::<f64>()?,
            ),
            false => None,
        };
        Ok(Block {
            attn_norm: self.norm(n.attn_norm, h)?,
            attn,
            ffn_norm: self.norm(n.ffn_norm, h)?,
            ffn,
            post_norms,
            output_scale,
        })
    }
}

/// The RMSNorm `name` of `size` weights, plus the family's offset: then in f32, as HF adds and
/// applies it (`Norm::in_f32`).
pub fn norm(weights: &Weights, name: &str, size: usize, cfg: &ModelConfig) -> Result<Norm> {
    Ok(match cfg.norm_weight_offset {
        0.0 => Norm::new(weights.get(name, &[size])?, cfg.rms_norm_eps),
        offset => Norm::in_f32(
            (weights.get_as(name, &[size], candle_core::DType::F32)? + offset)?,
            cfg.rms_norm_eps,
        ),
    })
}

/// The rows that gather a matrix kept in `groups` groups, each holding parts of `parts` rows
/// one after another, into part-major order: part 0 of every group, then part 1, and so on.
fn regrouped(
    groups: usize,
    parts: &[usize],
    device: &candle_core::Device,
) -> Result<candle_core::Tensor> {
    let per: usize = parts.iter().sum();
    let mut rows = Vec::with_capacity(per * groups);
    let mut offset = 0;
    for &len in parts {
        for g in 0..groups {
            rows.extend((0..len).map(|r| (g * per + offset + r) as u32));
        }
        offset += len;
    }
    Ok(candle_core::Tensor::new(rows.as_slice(), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two groups of parts [2, 1]: rows 0 1 | 2, 3 4 | 5 -> part 0 of both groups, then part 1.
    #[test]
    fn regrouping_puts_each_part_of_every_group_together() {
        let index = regrouped(2, &[2, 1], &candle_core::Device::Cpu).unwrap();
        assert_eq!(index.to_vec1::<u32>().unwrap(), [0, 1, 3, 4, 2, 5]);
    }
}
