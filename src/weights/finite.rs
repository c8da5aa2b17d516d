//! The weight check (`--check-weights`): every number read from a checkpoint is finite. One NaN
//! in a router or a norm turns every logit into NaN a few layers later; found at load, the
//! error names the tensor instead of a generation step.

use std::str::FromStr;

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::quant::QuantFormat;

/// Whether a load checks that the weights it reads are finite numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckWeights {
    /// Checked when the checkpoint's files hold at most [`AUTO_CHECK_BYTES`] (the fixtures, the
    /// bundled model): on larger ones the pass measured costly (q3-mini's 1.7 GB in bf16
    /// loaded in 5-8 s checked against 2-3 s unchecked), so they are checked on request.
    #[default]
    Auto,
    On,
    Off,
}

/// The largest checkpoint (bytes of its weight files) that [`CheckWeights::Auto`] checks.
pub const AUTO_CHECK_BYTES: u64 = 512 << 20;

impl CheckWeights {
    /// Whether to check a checkpoint whose weight files hold `bytes`.
    pub fn applies(self, bytes: u64) -> bool {
        match self {
            CheckWeights::Auto => bytes <= AUTO_CHECK_BYTES,
            CheckWeights::On => true,
            CheckWeights::Off => false,
        }
    }
}

impl FromStr for CheckWeights {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(CheckWeights::Auto),
            "on" => Ok(CheckWeights::On),
            "off" => Ok(CheckWeights::Off),
            other => Err(Error::Input(format!(
                "--check-weights {other:?} is not one of auto, on or off"
            ))),
        }
    }
}

/// The index and value (as f32) of the first of `values` that is not finite.
pub(super) fn first_non_finite<T: Copy + Into<f32>>(values: &[T]) -> Option<(usize, f32)> {
    values
        .iter()
        .map(|&v| v.into())
        .enumerate()
        .find(|(_, v): &(usize, f32)| !v.is_finite())
}

/// The index and value of the first number in `bytes` (little-endian values of `dtype`: F32,
/// BF16 or F16; `None` for any other) whose exponent bits are all ones: an infinity or a NaN.
/// Read from the stored bits, before decoding, so the pass is a scan of the mapped bytes.
pub(super) fn first_non_finite_stored(dtype: Dtype, bytes: &[u8]) -> Option<(usize, f32)> {
    match dtype {
        Dtype::F32 => {
            let at = bytes.chunks_exact(4).position(|b| {
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                bits & 0x7f80_0000 == 0x7f80_0000
            })?;
            let b = &bytes[4 * at..4 * at + 4];
            Some((at, f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        Dtype::BF16 | Dtype::F16 => {
            let mask = if dtype == Dtype::BF16 { 0x7f80 } else { 0x7c00 };
            let at = (bytes.chunks_exact(2))
                .position(|b| u16::from_le_bytes([b[0], b[1]]) & mask == mask)?;
            let bits = u16::from_le_bytes([bytes[2 * at], bytes[2 * at + 1]]);
            let value = match dtype {
                Dtype::BF16 => half::bf16::from_bits(bits).to_f32(),
                _ => half::f16::from_bits(bits).to_f32(),
            };
            Some((at, value))
        }
        _ => None,
    }
}

/// What is wrong with the first block of `bytes` (blocks of `format`, as ggml lays them out)
/// whose scales are not finite numbers. The codes are small integers, so finite scales make
/// every weight finite.
pub(super) fn block_problem(format: QuantFormat, bytes: &[u8]) -> Option<String> {
    // Byte offsets of the f16 scales in a block.
    let offsets: &[usize] = match format {
        QuantFormat::Q8_0 | QuantFormat::Q4_0 | QuantFormat::Q5_0 => &[0],
        QuantFormat::Q4K | QuantFormat::Q5K => &[0, 2],
        QuantFormat::Q6K => &[208],
        // E8M0 scales: every code but 255 is a finite power of two (always checked).
        QuantFormat::Mxfp4 => &[],
    };
    let size = format.block_bytes();
    bytes.chunks_exact(size).enumerate().find_map(|(block, b)| {
        offsets.iter().find_map(|&at| {
            let scale = half::f16::from_le_bytes([b[at], b[at + 1]]);
            (!scale.is_finite()).then(|| format!("block {block} has the scale {scale}"))
        })
    })
}

/// The message for tensor `name`'s first non-finite value.
pub(super) fn value_problem(index: usize, value: f32, shape: &[usize]) -> String {
    format!("value {index} of {shape:?} is {value}, not a finite number")
}

/// The error for a non-finite weight: names the tensor and how to load it anyway.
pub(super) fn error(path: &std::path::Path, name: &str, problem: String) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!(
            "tensor `{name}`: {problem}; the checkpoint is broken (`--check-weights off` loads \
             it anyway)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn the_first_non_finite_value_is_found_in_each_dtype() {
        assert_eq!(first_non_finite(&[1f32, 2.0, 3.0]), None);
        assert_eq!(
            first_non_finite(&[bf16::ONE, bf16::INFINITY]).map(|(i, _)| i),
            Some(1)
        );
        let (i, v) = first_non_finite(&[f16::ONE, f16::ZERO, f16::NAN]).unwrap();
        assert!(i == 2 && v.is_nan());
    }

    #[test]
    fn stored_bits_find_the_same_values() {
        let f32s: Vec<u8> = [1f32, -0.0, f32::MAX, f32::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            first_non_finite_stored(Dtype::F32, &f32s),
            Some((3, f32::NEG_INFINITY))
        );
        assert_eq!(first_non_finite_stored(Dtype::F32, &f32s[..12]), None);
        let halves = |v: [u16; 3]| -> Vec<u8> { v.iter().flat_map(|b| b.to_le_bytes()).collect() };
        let bf = halves([
            bf16::ONE.to_bits(),
            bf16::MAX.to_bits(),
            bf16::NAN.to_bits(),
        ]);
        let (at, v) = first_non_finite_stored(Dtype::BF16, &bf).unwrap();
        assert!(at == 2 && v.is_nan());
        let h = halves([f16::MAX.to_bits(), f16::INFINITY.to_bits(), 0]);
        assert_eq!(
            first_non_finite_stored(Dtype::F16, &h),
            Some((1, f32::INFINITY))
        );
        assert_eq!(first_non_finite_stored(Dtype::U8, &h), None);
    }

    #[test]
    fn broken_scales_are_found_in_every_format_with_float_scales() {
        for format in QuantFormat::ALL {
            let size = format.block_bytes();
            let mut bytes = vec![0u8; 3 * size];
            assert_eq!(block_problem(format, &bytes), None, "{format:?}");
            if format == QuantFormat::Mxfp4 {
                continue;
            }
            // The last f16 scale field of block 1 set to NaN (0x7e00).
            let at = size + if format == QuantFormat::Q6K { 208 } else { 0 };
            bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
            let problem = block_problem(format, &bytes).unwrap();
            assert!(
                problem.starts_with("block 1 has the scale NaN"),
                "{problem}"
            );
        }
    }
}
