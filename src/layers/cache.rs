//! `Cache`: the per-sequence state a caller owns: keys and values of every layer, and the
//! position the next token will take. Keys and values are written in place into buffers that
//! grow by doubling, so a decode step copies one position, not the whole history. A layer
//! with a sliding window keeps only the keys its window can still reach: its buffer holds at
//! most about twice the window, and the oldest keys are dropped (moved out in one copy every
//! window's worth of steps) as the sequence goes on. A linear-attention layer keeps a
//! recurrent state instead (`LinearState`): fixed in size, updated in place, and unable to go
//! back to an earlier position, except to a copy taken there (`Cache::snapshot_at`).

use candle_core::{Result as CandleResult, Tensor};

use crate::error::Result;

/// Positions a layer's buffers start with; they double from there as the sequence grows.
const INITIAL_CAPACITY: usize = 256;

/// One layer's keys and values: each (kv_heads, capacity, head_dim), contiguous; buffer
/// position j holds sequence position `base + j`, valid up to `Cache::position`. A latent
/// attention layer keeps one buffer (`v` is `None`): the latent and the rotary key of each
/// position, side by side.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Option<Tensor>,
    base: usize,
}

impl LayerKv {
    fn capacity(&self) -> usize {
        self.k.dims()[1]
    }
}

/// One linear-attention layer's state after the tokens so far.
#[derive(Debug)]
pub(crate) struct LinearState {
    /// (conv_kernel - 1, conv_dim): the convolution's inputs of the last tokens, oldest first
    /// (zeros before the first token).
    pub conv: Tensor,
    /// (value_heads, key_head_dim, value_head_dim) f32: the delta rule's state, updated in
    /// place by `Backend::gated_delta`.
    pub recurrent: Tensor,
}

impl LinearState {
    /// A copy with storage of its own (the state is updated in place).
    fn copy(&self) -> CandleResult<LinearState> {
        Ok(LinearState {
            conv: self.conv.copy()?,
            recurrent: self.recurrent.copy()?,
        })
    }
}

/// The linear-attention states at one position.
#[derive(Debug)]
struct Snapshot {
    position: usize,
    linear: Vec<Option<LinearState>>,
}

/// How many ids `a` and `b` begin with in common.
pub(crate) fn shared_start(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Keys and values seen so far, one entry per layer, or a linear-attention layer's state.
/// Made by `Model::new_cache`. Not `Clone`: its buffers are written in place, and a shallow
/// copy would share them.
#[derive(Debug)]
pub struct Cache {
    layers: Vec<Option<LayerKv>>,
    linear: Vec<Option<LinearState>>,
    /// Each layer's attention window (`None`: it sees every earlier position).
    windows: Vec<Option<usize>>,
    position: usize,
    /// The model's context: buffers never grow past it.
    max_positions: usize,
    /// Where to copy the linear-attention states (`snapshot_at`), and the copy.
    snapshot_at: Option<usize>,
    snapshot: Option<Snapshot>,
}

impl Cache {
    /// A cache for layers that all see every earlier position.
    #[cfg(test)]
    pub(crate) fn new(num_layers: usize, max_positions: usize) -> Self {
        Cache::with_windows(vec![None; num_layers], max_positions)
    }

    /// A cache for layers with these attention windows.
    pub(crate) fn with_windows(windows: Vec<Option<usize>>, max_positions: usize) -> Self {
        Cache {
            layers: windows.iter().map(|_| None).collect(),
            linear: windows.iter().map(|_| None).collect(),
            windows,
            position: 0,
            max_positions,
            snapshot_at: None,
            snapshot: None,
        }
    }

    /// How many tokens the cache holds: the position of the next token.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Forgets everything, to start a new sequence with the same cache (and its buffers).
    pub fn reset(&mut self) {
        self.position = 0;
        for kv in self.layers.iter_mut().flatten() {
            kv.base = 0;
        }
        self.linear.iter_mut().for_each(|s| *s = None);
        self.snapshot_at = None;
        self.snapshot = None;
    }

    /// Copies the linear-attention states when a forward call leaves the cache at `position`
    /// (a chat asks for the end of its prompt, where the next turn's prompt usually still
    /// agrees), so that `truncate` can go back there instead of starting over. Replaces any
    /// earlier request and copy; nothing is copied for a model without linear attention.
    pub fn snapshot_at(&mut self, position: usize) {
        self.snapshot_at = Some(position);
        self.snapshot = None;
    }

    /// Readies a cache that holds `held` (the ids fed to it so far) to go on into `prompt`:
    /// keeps the longest start the two share, but for at least the prompt's last token, which
    /// must be fed for its logits (`truncate`; it may keep less), and asks for the
    /// linear-attention states to be copied at the prompt's end (`snapshot_at`), which a
    /// conversation's next turn shares. Returns the positions kept: feed `prompt` from there.
    /// A chat's next turn, and a server's request on the cache of an earlier one.
    pub fn resume(&mut self, held: &[u32], prompt: &[u32]) -> Result<usize> {
        let keep = shared_start(held, prompt).min(prompt.len().saturating_sub(1));
        self.truncate(keep)?;
        self.snapshot_at(prompt.len());
        Ok(self.position)
    }

    /// Keeps the first `len` positions and forgets the rest, so that a sequence sharing that
    /// prefix can go on from there (a chat's next turn). A sliding-window layer that has
    /// already dropped keys the shorter sequence would need makes the cache start over from
    /// position 0. A linear-attention layer's state holds no earlier position: the cache goes
    /// back to its snapshot (`snapshot_at`) where that is at `len` or before, and starts over
    /// otherwise. Read [`Cache::position`] afterwards for what was kept.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        let mut len = self.position.min(len);
        if len < self.position && self.linear.iter().any(Option::is_some) {
            match self.snapshot.take() {
                Some(s) if s.position <= len => {
                    len = s.position;
                    self.linear = s.linear;
                }
                _ => {
                    self.reset();
                    return Ok(());
                }
            }
        }
        let reachable =
            self.layers
                .iter()
                .zip(&self.windows)
                .all(|(kv, window)| match (kv, window) {
                    (Some(kv), Some(w)) => kv.base <= len.saturating_sub(w.saturating_sub(1)),
                    _ => true,
                });
        if reachable {
            self.position = len;
        } else {
            self.reset();
        }
        Ok(())
    }

    /// Writes `k, v: (kv_heads, new, head_dim)` for layer `layer` at the current position;
    /// returns the keys and values the new positions may attend to, each (kv_heads, kept +
    /// new, head_dim), the new ones last: every earlier position for a full layer, the last
    /// window - 1 of them for a sliding one.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        match self.append_parts(layer, k, Some(v))? {
            (k, Some(v)) => Ok((k, v)),
            (_, None) => Err(crate::error::Error::Input(format!(
                "layer {layer}'s cache holds one tensor per position, not keys and values"
            ))),
        }
    }

    /// Writes one tensor per position, `rows: (1, new, width)` (a latent attention layer's
    /// latent and rotary key), and returns every position's, (1, cached + new, width).
    pub(crate) fn append_rows(&mut self, layer: usize, rows: Tensor) -> Result<Tensor> {
        Ok(self.append_parts(layer, rows, None)?.0)
    }

    fn append_parts(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Option<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (start, new) = (self.position, k.dims()[1]);
        let window = self.windows.get(layer).copied().flatten();
        // The first position any of the new queries can see.
        let keep_from = window.map_or(0, |w| start.saturating_sub(w.saturating_sub(1)));
        // Room for the keys kept and the new ones: doubling, up to the context for a full
        // layer; about twice the window for a sliding one, so that dropping old keys (one
        // copy) happens once per window's worth of decode steps.
        let need = start - keep_from + new;
        let capacity = match window {
            None => need.max(INITIAL_CAPACITY).next_power_of_two(),
            Some(w) => need.max(2 * w).next_power_of_two(),
        }
        .min(self.max_positions.max(need));
        let kv = match self.layers[layer].take() {
            // A sliding layer's buffer sized for a long prefill is not kept for the decode
            // steps after it: the first one moves what the window reaches to a small buffer.
            Some(kv)
                if kv.base <= keep_from
                    && kv.capacity() >= start - kv.base + new
                    && (window.is_none() || kv.capacity() <= capacity)
                    && kv.v.is_some() == v.is_some() =>
            {
                kv
            }
            old => {
                // A buffer of the other kind (keys and values, or one tensor) holds nothing
                // this call can use.
                let old = old.filter(|kv| kv.v.is_some() == v.is_some());
                let keep = old.as_ref().map(|kv| (kv.base, keep_from));
                let old_v = old.as_ref().and_then(|kv| kv.v.as_ref());
                LayerKv {
                    k: regrow(old.as_ref().map(|kv| &kv.k), &k, capacity, keep, start)?,
                    v: match &v {
                        Some(v) => Some(regrow(old_v, v, capacity, keep, start)?),
                        None => None,
                    },
                    base: keep_from,
                }
            }
        };
        let at = start - kv.base;
        kv.k.slice_set(&k.contiguous()?, 1, at)?;
        if let (Some(buf), Some(v)) = (&kv.v, &v) {
            buf.slice_set(&v.contiguous()?, 1, at)?;
        }
        // Only what the new positions can see: older keys still in a sliding buffer are not
        // handed to attention (the reference backend would score and mask them all).
        let skip = keep_from - kv.base;
        let len = at + new - skip;
        let out = (
            kv.k.narrow(1, skip, len)?,
            kv.v.as_ref().map(|v| v.narrow(1, skip, len)).transpose()?,
        );
        self.layers[layer] = Some(kv);
        Ok(out)
    }

    /// A forward call failed partway: linear-attention states that took its tokens in some
    /// layers and not others are of no position, so the cache starts over. (Keys and values
    /// appended past the position are overwritten by the next call.)
    pub(crate) fn forward_failed(&mut self) {
        if self.linear.iter().any(Option::is_some) {
            self.reset();
        }
    }

    /// Layer `layer`'s linear-attention state, made by `init` before its first token.
    pub(crate) fn linear_state(
        &mut self,
        layer: usize,
        init: impl FnOnce() -> Result<LinearState>,
    ) -> Result<&mut LinearState> {
        let slot = self.linear.get_mut(layer).ok_or_else(|| {
            crate::error::Error::Input(format!("layer {layer} is beyond the cache's layers"))
        })?;
        if slot.is_none() {
            *slot = Some(init()?);
        }
        Ok(slot.as_mut().expect("filled above"))
    }

    pub(crate) fn advance(&mut self, tokens: usize) -> Result<()> {
        self.position += tokens;
        if self.snapshot_at == Some(self.position) && self.linear.iter().any(Option::is_some) {
            let linear = self
                .linear
                .iter()
                .map(|s| s.as_ref().map(LinearState::copy).transpose())
                .collect::<CandleResult<_>>()?;
            self.snapshot = Some(Snapshot {
                position: self.position,
                linear,
            });
            self.snapshot_at = None;
        }
        Ok(())
    }
}

/// A zeroed (kv_heads, capacity, head_dim) buffer like `like`, holding positions
/// `keep_from..end` of `old` (whose first buffer position is sequence position `old_base`) at
/// its start; `keep` is `(old_base, keep_from)`.
fn regrow(
    old: Option<&Tensor>,
    like: &Tensor,
    capacity: usize,
    keep: Option<(usize, usize)>,
    end: usize,
) -> CandleResult<Tensor> {
    let (heads, _, head_dim) = like.dims3()?;
    let buf = Tensor::zeros((heads, capacity, head_dim), like.dtype(), like.device())?;
    if let (Some(old), Some((old_base, keep_from))) = (old, keep) {
        let (from, to) = (
            keep_from.saturating_sub(old_base),
            end.saturating_sub(old_base),
        );
        if to > from {
            buf.slice_set(&old.narrow(1, from, to - from)?.contiguous()?, 1, 0)?;
        }
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
            cache.advance(new).unwrap();
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

    /// A sliding layer hands back (at least) the last window - 1 positions and the new ones, as
    /// the full layer's history would give them, through prefills and decode steps that drop
    /// keys; its buffer stays within twice the window (rounded to a power of two).
    #[test]
    fn a_sliding_layer_keeps_only_what_its_window_can_reach() {
        let w = 5;
        let mut cache = Cache::with_windows(vec![None, Some(w)], 4096);
        let mut all: Option<Tensor> = None;
        for (step, new) in [3usize, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 12, 1]
            .into_iter()
            .enumerate()
        {
            let k = kv(2, new, step as f64 * 100.0);
            let (full, _) = cache.append(0, k.clone(), k.clone()).unwrap();
            let (sliding, _) = cache.append(1, k.clone(), k.clone()).unwrap();
            let start = cache.position();
            cache.advance(new).unwrap();
            let history = match all.take() {
                None => k,
                Some(a) => Tensor::cat(&[&a, &k], 1).unwrap(),
            };
            let end = start + new;
            let reach = end - start.saturating_sub(w - 1);
            let kept = sliding.dim(1).unwrap();
            assert!(
                kept >= reach,
                "step {step}: {kept} positions for a reach of {reach}"
            );
            let want = history.narrow(1, end - kept, kept).unwrap();
            let same = |a: &Tensor, b: &Tensor| {
                let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
                d.to_vec1::<f32>().unwrap().iter().all(|&x| x == 0.0)
            };
            assert!(same(&sliding, &want), "step {step}");
            assert!(same(&full, &history), "step {step}");
            let capacity = cache.layers[1].as_ref().unwrap().capacity();
            assert!(
                capacity <= (2 * w).max(w - 1 + new).next_power_of_two(),
                "step {step}: {capacity} positions held"
            );
            all = Some(history);
        }
        // Back to the shortest prefix whose window the kept keys still cover: kept; one
        // position shorter: start over.
        let base = cache.layers[1].as_ref().unwrap().base;
        assert!(base > 0, "the test should have dropped keys");
        cache.truncate(base + w - 1).unwrap();
        assert_eq!(cache.position(), base + w - 1);
        cache.truncate(base + w - 2).unwrap();
        assert_eq!(cache.position(), 0);
    }
}
