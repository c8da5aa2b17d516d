//! FP8 weights as DeepSeek and GLM publish them: `*.weight` in F8_E4M3 (e4m3fn: no infinities,
//! one NaN code per sign) and `*.weight_scale_inv` in F32, one scale per block of
//! `weight_block_size` (rows, columns), the last blocks of each dimension possibly partial. A
//! weight is its code's value times its block's scale. They are converted once at load to the
//! compute dtype, from where `--quant` may take them into a block format of ours (q8_0 keeps
//! about what FP8 has: 8 bits a weight and a scale per 32).

use crate::error::{Error, Result};

/// The value of each e4m3fn code: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0
/// is subnormal (m/8 · 2^-6), and S.1111.111 is NaN.
fn e4m3(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (exp, man) = ((code >> 3) & 0xf, code & 0x7);
    let magnitude = match (exp, man) {
        (0xf, 0x7) => f32::NAN,
        (0, m) => m as f32 / 8.0 * 2f32.powi(-6),
        (e, m) => (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7),
    };
    sign * magnitude
}

/// The scale tensor's name for weight `name` (`x.weight` -> `x.weight_scale_inv`).
pub fn scale_name(name: &str) -> String {
    format!("{name}_scale_inv")
}

/// The (rows, columns) of block scales a (rows, cols) weight needs.
pub fn scale_shape(
    (rows, cols): (usize, usize),
    [block_rows, block_cols]: [usize; 2],
) -> [usize; 2] {
    [rows.div_ceil(block_rows), cols.div_ceil(block_cols)]
}

/// Decodes `codes`, a row-major (rows, cols) weight, with `scales` (row-major, `scale_shape`
/// of it), into f32 values. A NaN code, or a scale that
/// is not finite, is an error naming the tensor: a checkpoint that holds one is broken, and a
/// forward through it would give NaN logits.
pub fn decode(
    name: &str,
    codes: &[u8],
    (rows, cols): (usize, usize),
    scales: &[f32],
    block: [usize; 2],
) -> Result<Vec<f32>> {
    let [_, scale_cols] = scale_shape((rows, cols), block);
    if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
        return Err(Error::Input(format!(
            "{}: block scale {i} is {}",
            scale_name(name),
            scales[i]
        )));
    }
    let table: Vec<f32> = (0..=255u8).map(e4m3).collect();
    let mut out = Vec::with_capacity(rows * cols);
    for (r, row) in codes.chunks_exact(cols.max(1)).take(rows).enumerate() {
        let scale_row = &scales[(r / block[0]) * scale_cols..][..scale_cols];
        for (c, &code) in row.iter().enumerate() {
            let v = table[code as usize];
            if v.is_nan() {
                return Err(Error::Input(format!(
                    "{name}: the F8_E4M3 code at row {r}, column {c} is NaN"
                )));
            }
            out.push(v * scale_row[c / block[1]]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes' values as the e4m3fn format defines them (and torch's float8_e4m3fn
    /// reads them): the largest normal 448, the smallest subnormal 2^-9, zero, signs.
    #[test]
    fn codes_decode_to_the_formats_values() {
        assert_eq!(e4m3(0x00), 0.0);
        assert_eq!(e4m3(0x01), 2f32.powi(-9));
        assert_eq!(e4m3(0x08), 2f32.powi(-6));
        assert_eq!(e4m3(0x38), 1.0);
        assert_eq!(e4m3(0x3c), 1.5);
        assert_eq!(e4m3(0x7e), 448.0);
        assert_eq!(e4m3(0xfe), -448.0);
        assert_eq!(e4m3(0xb8), -1.0);
        assert!(e4m3(0x7f).is_nan() && e4m3(0xff).is_nan());
    }

    /// A (3, 5) weight in blocks of (2, 2): the last row and column of blocks are partial.
    #[test]
    fn each_value_takes_its_blocks_scale() {
        let codes = [0x38u8; 15]; // 1.0 each
        let scales = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(scale_shape((3, 5), [2, 2]), [2, 3]);
        let v = decode("w", &codes, (3, 5), &scales, [2, 2]).unwrap();
        #[rustfmt::skip]
        let want = [
            1.0, 1.0, 2.0, 2.0, 3.0,
            1.0, 1.0, 2.0, 2.0, 3.0,
            4.0, 4.0, 5.0, 5.0, 6.0,
        ];
        assert_eq!(v, want);
        let nan = decode("w", &[0x7f; 15], (3, 5), &scales, [2, 2]).unwrap_err();
        assert!(nan.to_string().contains("NaN"), "{nan}");
        let inf = [1.0, f32::INFINITY, 3.0, 4.0, 5.0, 6.0];
        let err = decode("w", &codes, (3, 5), &inf, [2, 2]).unwrap_err();
        assert!(err.to_string().contains("w_scale_inv"), "{err}");
    }
}
