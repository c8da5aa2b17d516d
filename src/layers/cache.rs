//! `Cache`: the per-sequence state a caller owns: keys and values of every layer, and the
//! position the next token will take. Keys and values are written in place into buffers that
//! grow by doubling, so a decode step copies one position, not the whole history.

use candle_core::{Result as CandleResult, Tensor};

use crate::error::Result;

/// Positions a layer's buffers start with; they double from there as the sequence grows.
const INITIAL_CAPACITY: usize = 256;

/// One layer's keys and values: each (kv_heads, capacity, head_dim), contiguous; positions
/// `0..Cache::position` are valid.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

impl LayerKv {
    fn capacity(&self) -> usize {
        self.k.dims()[1]
    }
}

/// Keys and values seen so far, one entry per layer. Made by `Model::new_cache`. Not `Clone`:
/// its buffers are written in place, and a shallow copy would share them.
#[derive(Debug)]
pub struct Cache {
    layers: Vec<Option<LayerKv>>,
    position: usize,
    /// The model's context: buffers never grow past it.
    max_positions: usize,
}

impl Cache {
    pub(crate) fn new(num_layers: usize, max_positions: usize) -> Self {
        Cache {
            layers: (0..num_layers).map(|_| None).collect(),
            position: 0,
            max_positions,
        }
    }

    /// How many tokens the cache holds: the position of the next token.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Forgets everything, to start a new sequence with the same cache (and its buffers).
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Keeps the first `len` positions and forgets the rest, so that a sequence sharing that
    /// prefix can go on from there (a chat's next turn).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.position = self.position.min(len);
        Ok(())
    }

    /// Writes `k, v: (kv_heads, new, head_dim)` for layer `layer` at the current position;
    /// returns all keys and values so far, each (kv_heads, position + new, head_dim).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (start, new) = (self.position, k.dims()[1]);
        let end = start + new;
        let grown = match self.layers[layer].take() {
            Some(kv) if kv.capacity() >= end => kv,
            old => {
                let capacity = end
                    .max(INITIAL_CAPACITY)
                    .next_power_of_two()
                    .min(self.max_positions.max(end));
                LayerKv {
                    k: grow(old.as_ref().map(|kv| &kv.k), &k, capacity, start)?,
                    v: grow(old.as_ref().map(|kv| &kv.v), &v, capacity, start)?,
                }
            }
        };
        grown.k.slice_set(&k.contiguous()?, 1, start)?;
        grown.v.slice_set(&v.contiguous()?, 1, start)?;
        let out = (grown.k.narrow(1, 0, end)?, grown.v.narrow(1, 0, end)?);
        self.layers[layer] = Some(grown);
        Ok(out)
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.position += tokens;
    }
}

/// A zeroed (kv_heads, capacity, head_dim) buffer like `like`, holding the first `keep`
/// positions of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, capacity: usize, keep: usize) -> CandleResult<Tensor> {
    let (heads, _, head_dim) = like.dims3()?;
    let buf = Tensor::zeros((heads, capacity, head_dim), like.dtype(), like.device())?;
    if let (Some(old), true) = (old, keep > 0) {
        buf.slice_set(&old.narrow(1, 0, keep)?.contiguous()?, 1, 0)?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn kv(heads: usize, new: usize, seed: f64) -> Tensor {
        Tensor::arange(0f32, (heads * new * 2) as f32, &Device::Cpu)
            .and_then(|t| t.affine(1.0, seed))
            .and_then(|t| t.reshape((heads, new, 2)))
            .expect("a small tensor")
    }

    #[test]
    fn appends_in_place_across_growth_and_truncation_like_concatenation() {
        let mut cache = Cache::new(1, 4096);
        let mut want: Option<Tensor> = None;
        // 200 + 100 crosses the first capacity of 256; then a truncation goes back into it.
        for (step, new) in [200usize, 100, 1, 37].into_iter().enumerate() {
            if step == 3 {
                cache.truncate(250).expect("truncate");
                want = Some(want.unwrap().narrow(1, 0, 250).unwrap());
            }
            let k = kv(2, new, step as f64 * 1000.0);
            let (got, _) = cache.append(0, k.clone(), k.clone()).expect("append");
            cache.advance(new);
            let w = match want.take() {
                None => k,
                Some(w) => Tensor::cat(&[&w, &k], 1).unwrap(),
            };
            assert_eq!(got.dims(), w.dims());
            let diff = (got - &w).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(
                diff.to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
            want = Some(w);
        }
        assert_eq!(cache.position(), 287);
    }
}
