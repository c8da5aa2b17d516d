//! The routed experts of a sparse block, stacked into one layout whatever the checkpoint's:
//! `gate_up: [E, 2I, H]` (the I gate rows, then the I up rows) and `down: [E, H, I]`, with
//! biases `[E, 2I]` and `[E, H]` in the same order.

use candle_core::Tensor;

use super::Weights;
use crate::arch::{join, ExpertNames, TensorNames};
use crate::error::{Error, Result};
use crate::quant::{dequantize_into, BlockMxfp4, QMatrix, MXFP4_BLOCK, MXFP4_BLOCK_BYTES};

impl Weights {
    /// The routed experts of one sparse block, stacked as `gate_up: [E, 2I, H]` (the I gate
    /// rows first, then the I up rows) and `down: [E, H, I]`, whatever the checkpoint layout.
    pub fn experts(
        &self,
        names: &TensorNames,
        prefix: &str,
        (e, i, h): (usize, usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        match &names.experts {
            ExpertNames::Stacked { gate_up, down } => Ok((
                self.get(&join(prefix, gate_up), &[e, 2 * i, h])?,
                self.get(&join(prefix, down), &[e, h, i])?,
            )),
            ExpertNames::Separate { gate, up, down } => {
                let gate = self.get(&join(prefix, gate), &[e, i, h])?;
                let up = self.get(&join(prefix, up), &[e, i, h])?;
                Ok((
                    Tensor::cat(&[gate, up], 1)?,
                    self.get(&join(prefix, down), &[e, h, i])?,
                ))
            }
            ExpertNames::Interleaved { gate_up, down } => {
                let (gate_up, down) = (format!("{prefix}.{gate_up}"), format!("{prefix}.{down}"));
                let packed = format!("{gate_up}_blocks");
                if self.random.is_none() && self.contains(&packed) {
                    // MXFP4: blocks along the input dim, rows already (out, in).
                    let gate_up = self.mxfp4(&gate_up, (e, 2 * i, h))?;
                    let down = self.mxfp4(&down, (e, h, i))?;
                    return Ok((deinterleave(&gate_up)?, down));
                }
                // Dense: (E, in, out), gate and up columns alternating.
                let gate_up = self.get(&gate_up, &[e, h, 2 * i])?.transpose(1, 2)?;
                let down = self.get(&down, &[e, i, h])?.transpose(1, 2)?.contiguous()?;
                Ok((deinterleave(&gate_up)?, down))
            }
            ExpertNames::PerExpert { gate, up, down } => {
                // transformers 5 keeps these families' experts stacked in memory, and a
                // checkpoint saved so (or published so, as Qwen3.5's may be) holds them stacked:
                // `experts.gate_up_proj` [E, 2I, H] (gate rows first) and `experts.down_proj`.
                let (stacked_gate_up, stacked_down) = (
                    join(prefix, "experts.gate_up_proj"),
                    join(prefix, "experts.down_proj"),
                );
                if self.random.is_none() && self.contains(&stacked_gate_up) {
                    return Ok((
                        self.get(&stacked_gate_up, &[e, 2 * i, h])?,
                        self.get(&stacked_down, &[e, h, i])?,
                    ));
                }
                let names = [*gate, *up, *down];
                self.stack_per_expert(prefix, names, "weight", (e, &[i, h], &[h, i]))
            }
        }
    }

    /// The biases of a layer's experts as (gate_up [E, 2I], down [E, H]), stacked like
    /// [`Weights::experts`] stacks the weights.
    pub fn expert_biases(
        &self,
        names: &TensorNames,
        prefix: &str,
        (e, i, h): (usize, usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        match &names.experts {
            ExpertNames::Interleaved { gate_up, down } => {
                let bias =
                    |name: &str, shape: &[usize]| self.get(&format!("{prefix}.{name}_bias"), shape);
                let gate_up = bias(gate_up, &[e, 2 * i])?;
                Ok((deinterleave(&gate_up)?, bias(down, &[e, h])?))
            }
            ExpertNames::Separate { gate, up, down } => {
                // Beside the weights: `ffn_gate_exps.bias` for `ffn_gate_exps.weight`.
                let bias = |weight: &str, shape: &[usize]| {
                    let name = join(prefix, weight);
                    let name = name.strip_suffix(".weight").unwrap_or(&name);
                    self.get(&format!("{name}.bias"), shape)
                };
                let gate_up = Tensor::cat(&[bias(gate, &[e, i])?, bias(up, &[e, i])?], 1)?;
                Ok((gate_up, bias(down, &[e, h])?))
            }
            ExpertNames::Stacked { .. } => {
                let Some(b) = &names.expert_biases else {
                    return Err(Error::Input(format!(
                        "{prefix}: the config asks for expert biases, but this family names none"
                    )));
                };
                Ok((
                    self.get(&format!("{prefix}.{}", b.gate_up), &[e, 2 * i])?,
                    self.get(&format!("{prefix}.{}", b.down), &[e, h])?,
                ))
            }
            ExpertNames::PerExpert { gate, up, down } => {
                let names = [*gate, *up, *down];
                self.stack_per_expert(prefix, names, "bias", (e, &[i], &[h]))
            }
        }
    }

    /// A layer's MXFP4 experts as blocks, read without dequantizing, where the checkpoint
    /// stores them so (gpt-oss as published): `(gate_up [E, 2I, H], down [E, H, I])` in the
    /// stacked layout's row order; `None` for experts stored otherwise.
    pub fn mxfp4_experts(
        &self,
        names: &TensorNames,
        prefix: &str,
        (e, i, h): (usize, usize, usize),
    ) -> Result<Option<(QMatrix, QMatrix)>> {
        let ExpertNames::Interleaved { gate_up, down } = &names.experts else {
            return Ok(None);
        };
        let (gate_up, down) = (format!("{prefix}.{gate_up}"), format!("{prefix}.{down}"));
        if self.random.is_some() || !self.contains(&format!("{gate_up}_blocks")) {
            return Ok(None);
        }
        let gate_up_blocks = self.mxfp4_blocks(&gate_up, (e, 2 * i, h))?;
        // Rows alternate gate, up: all gate rows first, then all up rows.
        let per_row = h / MXFP4_BLOCK;
        let mut reordered = Vec::with_capacity(gate_up_blocks.len());
        for x in 0..e {
            let expert = &gate_up_blocks[x * 2 * i * per_row..][..2 * i * per_row];
            for parity in 0..2 {
                for r in (parity..2 * i).step_by(2) {
                    reordered.extend_from_slice(&expert[r * per_row..][..per_row]);
                }
            }
        }
        Ok(Some((
            QMatrix::from_mxfp4(reordered, &[e, 2 * i, h])?,
            QMatrix::from_mxfp4(self.mxfp4_blocks(&down, (e, h, i))?, &[e, h, i])?,
        )))
    }

    /// `{name}_blocks` and `{name}_scales` as blocks of the CPU's MXFP4 format, rows of
    /// (e, out, in) in order.
    fn mxfp4_blocks(
        &self,
        name: &str,
        (e, out, inp): (usize, usize, usize),
    ) -> Result<Vec<BlockMxfp4>> {
        if !inp.is_multiple_of(MXFP4_BLOCK) {
            return Err(Error::Input(format!(
                "{name}: MXFP4 rows of {inp} values are not whole blocks of {MXFP4_BLOCK}"
            )));
        }
        let groups = inp / MXFP4_BLOCK;
        let blocks = self.bytes(
            &format!("{name}_blocks"),
            &[e, out, groups, MXFP4_BLOCK_BYTES],
        )?;
        let scales = self.scales(name, (e, out, groups))?;
        let repacked = blocks
            .chunks_exact(MXFP4_BLOCK_BYTES)
            .zip(scales)
            .map(|(codes, &scale)| {
                let codes: &[u8; MXFP4_BLOCK_BYTES] =
                    codes.try_into().expect("chunks of MXFP4_BLOCK_BYTES");
                BlockMxfp4::from_interleaved(codes, scale)
            })
            .collect();
        self.release(&format!("{name}_blocks"));
        self.release(&format!("{name}_scales"));
        Ok(repacked)
    }

    /// `{name}_scales`, refused if any is 255: E8M0's NaN, which no quantizer writes; read
    /// as a number it would pass for a weight of 2^128.
    fn scales(&self, name: &str, (e, out, groups): (usize, usize, usize)) -> Result<&[u8]> {
        let scales_name = format!("{name}_scales");
        let scales = self.bytes(&scales_name, &[e, out, groups])?;
        if let Some(at) = scales.iter().position(|&s| s == 255) {
            return Err(Error::Input(format!(
                "{scales_name}: scale {at} is 255, E8M0's NaN (a corrupt checkpoint)"
            )));
        }
        Ok(scales)
    }

    /// The MXFP4 tensor `{name}_blocks` (`[.., out, in / 32, 16]` U8) with `{name}_scales`
    /// (`[.., out, in / 32]` U8, E8M0) dequantized to the compute dtype: (e, out, in).
    fn mxfp4(&self, name: &str, (e, out, inp): (usize, usize, usize)) -> Result<Tensor> {
        let blocks = self.mxfp4_blocks(name, (e, out, inp))?;
        let mut values = vec![0f32; e * out * inp];
        dequantize_into(&blocks, &mut values);
        let t = Tensor::from_vec(values, (e, out, inp), &candle_core::Device::Cpu)?;
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// Expert x's `{prefix}.experts.{x}.{gate|up|down}.{suffix}` tensors stacked: gate and up
    /// concatenated (gate first) into one entry of shape 2 · `part`, down as `down`.
    fn stack_per_expert(
        &self,
        prefix: &str,
        [gate, up, down]: [&str; 3],
        suffix: &str,
        (e, part, down_shape): (usize, &[usize], &[usize]),
    ) -> Result<(Tensor, Tensor)> {
        let mut gate_ups = Vec::with_capacity(e);
        let mut downs = Vec::with_capacity(e);
        for x in 0..e {
            let name = |proj: &str| format!("{prefix}.experts.{x}.{proj}.{suffix}");
            let g = self.get(&name(gate), part)?;
            let u = self.get(&name(up), part)?;
            gate_ups.push(Tensor::cat(&[g, u], 0)?);
            downs.push(self.get(&name(down), down_shape)?);
        }
        Ok((Tensor::stack(&gate_ups, 0)?, Tensor::stack(&downs, 0)?))
    }
}

/// Rows (dim 1) that alternate gate, up, gate, up... reordered as all gate rows, then all up
/// rows: (E, 2I, ..) -> (E, 2I, ..), contiguous.
fn deinterleave(t: &Tensor) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let (e, two_i) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    let pairs = t.contiguous()?.reshape((e, two_i / 2, 2, rest))?;
    let split = pairs.transpose(1, 2)?.contiguous()?; // (E, 2, I, rest)
    Ok(split.reshape(dims)?)
}
