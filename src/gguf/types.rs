//! GGML's tensor types as GGUF files number them, with the block each packs values into.

use std::fmt;

/// A tensor type a GGUF file may name (ggml.h's `ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq2Xxs,
    Iq2Xs,
    Iq3Xxs,
    Iq1S,
    Iq4Nl,
    Iq3S,
    Iq2S,
    Iq4Xs,
    I8,
    I16,
    I32,
    I64,
    F64,
    Iq1M,
    BF16,
    Tq1_0,
    Tq2_0,
    Mxfp4,
}

/// (type, id, name, values per block, bytes per block), as gguf-py's GGML_QUANT_SIZES.
const TYPES: [(GgmlType, u32, &str, usize, usize); 32] = {
    use GgmlType::*;
    const K: usize = 256;
    [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q4_0, 2, "Q4_0", 32, 2 + 16),
        (Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
        (Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
        (Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
        (Q8_0, 8, "Q8_0", 32, 2 + 32),
        (Q8_1, 9, "Q8_1", 32, 2 + 2 + 32),
        (Q2K, 10, "Q2_K", K, 2 + 2 + K / 16 + K / 4),
        (Q3K, 11, "Q3_K", K, 2 + K / 4 + K / 8 + 12),
        (Q4K, 12, "Q4_K", K, 2 + 2 + K / 2 + 12),
        (Q5K, 13, "Q5_K", K, 2 + 2 + K / 2 + K / 8 + 12),
        (Q6K, 14, "Q6_K", K, 2 + K / 2 + K / 4 + K / 16),
        (Q8K, 15, "Q8_K", K, 4 + K + K / 8),
        (Iq2Xxs, 16, "IQ2_XXS", K, 2 + K / 4),
        (Iq2Xs, 17, "IQ2_XS", K, 2 + K / 4 + K / 32),
        (Iq3Xxs, 18, "IQ3_XXS", K, 2 + K / 4 + K / 8),
        (Iq1S, 19, "IQ1_S", K, 2 + K / 8 + K / 16),
        (Iq4Nl, 20, "IQ4_NL", 32, 2 + 16),
        (Iq3S, 21, "IQ3_S", K, 2 + K / 4 + K / 8 + K / 32 + 4),
        (Iq2S, 22, "IQ2_S", K, 2 + K / 4 + K / 16),
        (Iq4Xs, 23, "IQ4_XS", K, 2 + 2 + K / 2 + K / 64),
        (I8, 24, "I8", 1, 1),
        (I16, 25, "I16", 1, 2),
        (I32, 26, "I32", 1, 4),
        (I64, 27, "I64", 1, 8),
        (F64, 28, "F64", 1, 8),
        (Iq1M, 29, "IQ1_M", K, K / 8 + K / 16 + K / 32),
        (BF16, 30, "BF16", 1, 2),
        (Tq1_0, 34, "TQ1_0", K, 2 + 4 * 13),
        (Tq2_0, 35, "TQ2_0", K, 2 + 64),
        (Mxfp4, 39, "MXFP4", 32, 1 + 16),
    ]
};

impl GgmlType {
    /// The type a file numbers `id`; `None` for an id this reader does not know.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        TYPES
            .iter()
            .find(|t| t.0 == self)
            .expect("every type has an entry")
    }

    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// The name llama.cpp prints (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Values per block: 1 for plain numbers, 32 or 256 for block formats.
    pub fn block_values(self) -> usize {
        self.entry().3
    }

    pub fn block_bytes(self) -> usize {
        self.entry().4
    }

    /// The bytes of a row of `values` values, `None` unless rows are whole blocks.
    pub fn row_bytes(self, values: usize) -> Option<usize> {
        let per = self.block_values();
        values
            .is_multiple_of(per)
            .then(|| values / per * self.block_bytes())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_one_to_one_and_sizes_are_ggml_s() {
        for (t, id, name, _, _) in TYPES {
            assert_eq!(GgmlType::from_id(id), Some(t));
            assert_eq!(t.name(), name);
            assert_eq!(t.id(), id);
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2, removed from ggml");
        assert_eq!(GgmlType::Q4K.block_bytes(), 144);
        assert_eq!(GgmlType::Q6K.block_bytes(), 210);
        assert_eq!(GgmlType::Q5K.block_bytes(), 176);
        assert_eq!(GgmlType::Q8_0.row_bytes(64), Some(68));
        assert_eq!(GgmlType::Q4K.row_bytes(128), None);
    }
}
