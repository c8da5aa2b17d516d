//! Where a quantized matrix's blocks live: in memory of its own (converted at load), or in
//! a mapped file, read in place (a GGUF tensor's bytes are its blocks).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, Range};
use std::sync::Arc;

use super::QuantBlock;

/// Bytes that stay put for as long as they are held: a memory-mapped file.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Blocks of type `B`, owned or borrowed from mapped bytes that this keeps alive.
pub enum Store<B> {
    Owned(Vec<B>),
    Mapped {
        bytes: SharedBytes,
        range: Range<usize>,
        _blocks: PhantomData<B>,
    },
}

impl<B: QuantBlock> Store<B> {
    /// The blocks in `bytes[range]`, in place where they are aligned for `B` (as GGUF's
    /// alignment of tensor data makes them), copied otherwise. `None` if the range is not
    /// inside the bytes or not whole blocks.
    pub fn mapped(bytes: SharedBytes, range: Range<usize>) -> Option<Store<B>> {
        let data = (*bytes).as_ref().get(range.clone())?;
        if !data.len().is_multiple_of(size_of::<B>()) {
            return None;
        }
        if bytemuck::try_cast_slice::<u8, B>(data).is_err() {
            return Some(Store::Owned(
                data.chunks_exact(size_of::<B>())
                    .map(B::from_ggml)
                    .collect(),
            ));
        }
        Some(Store::Mapped {
            bytes,
            range,
            _blocks: PhantomData,
        })
    }

    /// Whether the blocks are read in place from mapped bytes.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Store::Mapped { .. })
    }
}

impl<B: QuantBlock> Deref for Store<B> {
    type Target = [B];

    #[inline]
    fn deref(&self) -> &[B] {
        match self {
            Store::Owned(v) => v,
            // The cast succeeded in `mapped` on these very bytes, which do not move while
            // held (a mapping's address is fixed), so it succeeds again.
            Store::Mapped { bytes, range, .. } => {
                bytemuck::cast_slice(&(**bytes).as_ref()[range.clone()])
            }
        }
    }
}

impl<B> fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Owned(v) => write!(f, "{} owned blocks", v.len()),
            Store::Mapped { range, .. } => write!(f, "mapped bytes {range:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::BlockQ8_0;

    #[test]
    fn aligned_bytes_are_read_in_place_and_misaligned_ones_copied() {
        let blocks: Vec<u8> = (0..34 * 3 + 1).map(|i| i as u8).collect();
        let bytes: SharedBytes = Arc::new(blocks.clone());
        let base = (*bytes).as_ref().as_ptr() as usize;
        // An even offset is aligned for q8_0's f16 scale; an odd one is not.
        let (even, odd) = if base.is_multiple_of(2) {
            (0, 1)
        } else {
            (1, 0)
        };
        let in_place = Store::<BlockQ8_0>::mapped(bytes.clone(), even..even + 68).unwrap();
        assert!(in_place.is_mapped());
        let copied = Store::<BlockQ8_0>::mapped(bytes.clone(), odd..odd + 68).unwrap();
        assert!(!copied.is_mapped());
        for (store, at) in [(in_place, even), (copied, odd)] {
            assert_eq!(store.len(), 2);
            assert_eq!(store[1], BlockQ8_0::from_ggml(&blocks[at + 34..at + 68]));
        }
        // Not whole blocks, or outside the bytes.
        assert!(Store::<BlockQ8_0>::mapped(bytes.clone(), 0..35).is_none());
        assert!(Store::<BlockQ8_0>::mapped(bytes, 68..136).is_none());
    }
}
