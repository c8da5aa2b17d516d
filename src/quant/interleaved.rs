//! Weights interleaved at load for the x86 integer tiles: the blocks of eight rows at one
//! position of k side by side, so that one 256-bit register holds four codes of each of the
//! eight rows and one `vpdpbusd` advances eight dot products at once, the scales of the eight
//! rows one load (llama.cpp repacks Q4_0 so, as `q4_0_8x8`). The bytes per weight are the
//! file's; only their order changes. A matrix is interleaved only where the CPU kernels read
//! it so (x86 with AVX2) and its rows come in whole groups (`interleaves`).

use half::f16;
use rayon::prelude::*;

use super::blocks::pod_blocks;
use super::kquants::{pack_scale_min, scale_min};
use super::{BlockMxfp4, BlockQ4K, BlockQ4_0, BlockQ8_0, QuantBlock, QuantFormat, BLOCK, K_BLOCK};

/// Rows per group.
pub const GROUP_ROWS: usize = 8;

/// Eight rows' blocks at one position of k.
pub trait Interleaved: bytemuck::Pod + Send + Sync {
    type Block: QuantBlock;
    /// The group of `rows[r]` as row r.
    fn gather(rows: [&Self::Block; GROUP_ROWS]) -> Self;
    /// Row r's block, as it was.
    fn row(&self, r: usize) -> Self::Block;
}

/// Eight q4_0 blocks: the scales, then four chunks of 32 bytes in which chunk c holds bytes
/// 4c..4c + 4 of row r at 4r..4r + 4. A q4_0 byte l holds weight l in its low nibble and
/// weight l + 16 in its high one, so chunk c's low nibbles are weights 4c.. of every row and
/// its high nibbles weights 16 + 4c.. .
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0x8 {
    pub d: [f16; GROUP_ROWS],
    pub qs: [u8; GROUP_ROWS * BLOCK / 2],
}

/// Eight q4_K super-blocks: the scales, the 6-bit run scales and mins unpacked to a byte each
/// (run-major: `scales[run][row]`, so that one 8-byte load gives a run's scale of every row),
/// then the codes chunked as q4_0x8's (`chunk_bytes`): chunk 8p + c (at 256p + 32c) holds
/// bytes 32p + 4c..+4 of row r at 4r, its low nibbles from run 2p, its high ones run 2p + 1.
/// 1184 bytes for 8 · 144: the unpacked scales cost 2.8% more reading.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4Kx8 {
    pub d: [f16; GROUP_ROWS],
    pub dmin: [f16; GROUP_ROWS],
    pub scales: [[u8; GROUP_ROWS]; 8],
    pub mins: [[u8; GROUP_ROWS]; 8],
    pub qs: [u8; GROUP_ROWS * K_BLOCK / 2],
}

/// Eight MXFP4 blocks: the exponents, then q4_0x8's chunks (MXFP4 packs its codes as q4_0
/// does: byte l holds weight l and weight l + 16).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockMxfp4x8 {
    pub e: [u8; GROUP_ROWS],
    pub qs: [u8; GROUP_ROWS * BLOCK / 2],
}

/// Eight q8_0 blocks: the scales, then eight chunks of 32 bytes in which chunk c holds codes
/// 4c..4c + 4 of row r at 4r, each stored as code + 128 (unsigned, as `vpdpbusd` takes it).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0x8 {
    pub d: [f16; GROUP_ROWS],
    pub qs: [u8; GROUP_ROWS * BLOCK],
}

pod_blocks!(
    BlockQ4_0x8 = 144,
    BlockQ4Kx8 = 1184,
    BlockMxfp4x8 = 136,
    BlockQ8_0x8 = 272
);

impl Interleaved for BlockQ8_0x8 {
    type Block = BlockQ8_0;

    fn gather(rows: [&BlockQ8_0; GROUP_ROWS]) -> Self {
        let stored = rows.map(|b| b.qs.map(|q| q as u8 ^ 0x80));
        BlockQ8_0x8 {
            d: rows.map(|b| b.d),
            qs: chunk_bytes(stored.each_ref()),
        }
    }

    fn row(&self, r: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: self.d[r],
            qs: row_bytes(&self.qs, r).map(|q: u8| (q ^ 0x80) as i8),
        }
    }
}

/// Eight rows' byte arrays of N in chunks of 32 bytes: chunk u holds bytes 4u..4u + 4 of row
/// r at 4r (`M` is 8 · N). Every group's codes are laid out so.
fn chunk_bytes<const N: usize, const M: usize>(rows: [&[u8; N]; GROUP_ROWS]) -> [u8; M] {
    const { assert!(M == GROUP_ROWS * N && N.is_multiple_of(4)) };
    std::array::from_fn(|i| {
        let (u, r, byte) = (i / 32, i % 32 / 4, i % 4);
        rows[r][4 * u + byte]
    })
}

/// Row r's N bytes back from `chunk_bytes`.
fn row_bytes<const N: usize, const M: usize>(chunks: &[u8; M], r: usize) -> [u8; N] {
    const { assert!(M == GROUP_ROWS * N && N.is_multiple_of(4)) };
    std::array::from_fn(|l| chunks[32 * (l / 4) + 4 * r + l % 4])
}

impl Interleaved for BlockMxfp4x8 {
    type Block = BlockMxfp4;

    fn gather(rows: [&BlockMxfp4; GROUP_ROWS]) -> Self {
        BlockMxfp4x8 {
            e: rows.map(|b| b.e),
            qs: chunk_bytes(rows.map(|b| &b.qs)),
        }
    }

    fn row(&self, r: usize) -> BlockMxfp4 {
        BlockMxfp4 {
            e: self.e[r],
            qs: row_bytes(&self.qs, r),
        }
    }
}

impl Interleaved for BlockQ4Kx8 {
    type Block = BlockQ4K;

    fn gather(rows: [&BlockQ4K; GROUP_ROWS]) -> Self {
        let unpacked = rows.map(|b| std::array::from_fn::<_, 8, _>(|j| scale_min(j, &b.scales)));
        BlockQ4Kx8 {
            d: rows.map(|b| b.d),
            dmin: rows.map(|b| b.dmin),
            scales: std::array::from_fn(|j| std::array::from_fn(|r| unpacked[r][j].0)),
            mins: std::array::from_fn(|j| std::array::from_fn(|r| unpacked[r][j].1)),
            qs: chunk_bytes(rows.map(|b| &b.qs)),
        }
    }

    fn row(&self, r: usize) -> BlockQ4K {
        let sc = std::array::from_fn(|j| self.scales[j][r]);
        let m = std::array::from_fn(|j| self.mins[j][r]);
        BlockQ4K {
            d: self.d[r],
            dmin: self.dmin[r],
            scales: pack_scale_min(&sc, &m),
            qs: row_bytes(&self.qs, r),
        }
    }
}

impl Interleaved for BlockQ4_0x8 {
    type Block = BlockQ4_0;

    fn gather(rows: [&BlockQ4_0; GROUP_ROWS]) -> Self {
        BlockQ4_0x8 {
            d: rows.map(|b| b.d),
            qs: chunk_bytes(rows.map(|b| &b.qs)),
        }
    }

    fn row(&self, r: usize) -> BlockQ4_0 {
        BlockQ4_0 {
            d: self.d[r],
            qs: row_bytes(&self.qs, r),
        }
    }
}

/// Whether a matrix of `format` and `dims` is kept interleaved: the x86 tiles read q4_0, MXFP4
/// and q4_K so, and q8_0 where they have AVX-512 VNNI (its codes as stored are too large for
/// AVX2's `vpmaddubsw`, whose pairs of products saturate),
/// given rows in whole groups per matrix of the stack (so that an expert's rows, and any
/// multiple of eight of them, are whole groups).
pub fn interleaves(format: QuantFormat, dims: &[usize]) -> bool {
    let rows = dims.len().checked_sub(2).map(|d| dims[d]);
    let read = match format {
        QuantFormat::Q4_0 | QuantFormat::Mxfp4 | QuantFormat::Q4K => x86_tiles(),
        QuantFormat::Q8_0 => x86_tiles() && x86_vnni(),
        _ => false,
    };
    read && rows.is_some_and(|r| r.is_multiple_of(GROUP_ROWS))
}

#[cfg(target_arch = "x86_64")]
fn x86_tiles() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
fn x86_vnni() -> bool {
    is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_tiles() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_vnni() -> bool {
    false
}

/// Rows of `kb` blocks each (a whole number of groups) into groups: group g's kb groups (rows
/// 8g..8g + 8) contiguous, in order of k.
pub fn interleave<G: Interleaved>(blocks: &[G::Block], kb: usize) -> Vec<G> {
    let groups = blocks.len() / (kb * GROUP_ROWS).max(1);
    let mut out = vec![G::zeroed(); groups * kb];
    out.par_chunks_mut(kb.max(1))
        .enumerate()
        .for_each(|(g, group)| {
            let rows = &blocks[g * GROUP_ROWS * kb..][..GROUP_ROWS * kb];
            for (b, o) in group.iter_mut().enumerate() {
                *o = G::gather(std::array::from_fn(|r| &rows[r * kb + b]));
            }
        });
    out
}

/// Rows `first..first + count` (of `kb` blocks each) of interleaved `groups` back in row order.
/// `first` and `count` are whole groups.
pub fn deinterleave<G: Interleaved>(
    groups: &[G],
    kb: usize,
    first: usize,
    count: usize,
) -> Vec<G::Block> {
    let groups = &groups[first / GROUP_ROWS * kb..(first + count) / GROUP_ROWS * kb];
    let mut out = vec![G::Block::ZERO; count * kb];
    deinterleave_into(groups, kb, &mut out);
    out
}

/// Every row of `groups` (of `kb` blocks each) into `out`, in row order: `out` holds
/// `groups.len() · 8` blocks.
pub fn deinterleave_into<G: Interleaved>(groups: &[G], kb: usize, out: &mut [G::Block]) {
    assert_eq!(
        out.len(),
        groups.len() * GROUP_ROWS,
        "deinterleave: output size"
    );
    for (group, rows) in groups
        .chunks_exact(kb.max(1))
        .zip(out.chunks_exact_mut(GROUP_ROWS * kb.max(1)))
    {
        for (r, row) in rows.chunks_exact_mut(kb.max(1)).enumerate() {
            for (o, g) in row.iter_mut().zip(group) {
                *o = g.row(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_groups_keep_every_byte_of_every_row() {
        let bytes =
            |b: usize, n: usize| -> Vec<u8> { (0..n).map(|i| (b * 31 + i * 7) as u8).collect() };
        let blocks: Vec<BlockQ4K> = (0..16)
            .map(|b| BlockQ4K::from_ggml(&bytes(b, 144)))
            .collect();
        let groups = interleave::<BlockQ4Kx8>(&blocks, 2);
        // As bytes: some scales are NaNs.
        let back = deinterleave(&groups, 2, 0, 8);
        assert_eq!(
            bytemuck::cast_slice::<_, u8>(&back),
            bytemuck::cast_slice::<_, u8>(&blocks)
        );
    }

    #[test]
    fn interleaving_keeps_every_block_and_undoing_it_gives_them_back() {
        let kb = 3;
        let blocks: Vec<BlockQ4_0> = (0..16 * kb)
            .map(|b| BlockQ4_0 {
                d: f16::from_f32(b as f32),
                qs: std::array::from_fn(|l| (b * 16 + l) as u8),
            })
            .collect();
        let groups = interleave::<BlockQ4_0x8>(&blocks, kb);
        assert_eq!(groups.len(), 2 * kb);
        // Row 11 (group 1, row 3), block 2.
        assert_eq!(groups[kb + 2].row(3), blocks[11 * kb + 2]);
        // Chunk 1 of that group: row 3's bytes 4..8 at 32 + 12.
        assert_eq!(groups[kb + 2].qs[44..48], blocks[11 * kb + 2].qs[4..8]);
        assert_eq!(deinterleave(&groups, kb, 0, 16), blocks);
        assert_eq!(deinterleave(&groups, kb, 8, 8), blocks[8 * kb..]);
    }
}
