//! Causal grouped-query attention on the CPU, in f32, straight over the KV cache's buffers.
//!
//! Why our own: attention through candle's ops is a dozen tensors per layer (scores, scale,
//! mask, softmax, the weighted sum, reshapes), and candle's CPU matmul asks the OS for the core
//! count on every call (it reads /proc/cpuinfo): at decode that fixed cost, not the few
//! kilobytes of cache read, was the price of attention. Here one task per (token, kv head)
//! scores, normalises and sums in one pass with one scratch row, and the query heads that share
//! a kv head read each key and value row once between them.
//!
//! Slow twin: `ops::reference::attention` (scores, mask, softmax, matmul with candle's ops),
//! compared in the op table (ops/tests.rs); the unit tests below check each kernel family
//! against an f64 oracle.

use rayon::prelude::*;

use super::isa::Isa;

/// Below this many multiply-adds (scores and weighted sum, all heads), a few microseconds of
/// work, attention runs on the calling thread. Decode passes keep the pool's workers awake
/// (awake.rs), so a split costs about two microseconds, not the tens a wake-up did (at 2^20 a
/// decode step's attention ran alone on one core up to ~500 positions: q3-mini Q4_K_M decode
/// after 128, Intel Xeon without AMX, five rounds: 200.4 -> 213.2 tokens/s at 2^16).
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// The shape of one call: `tokens` new queries at positions `cached..cached + tokens`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tokens: usize,
    pub cached: usize,
    /// Keys each query sees, its own included (sliding-window attention); `None`: all.
    pub window: Option<usize>,
    /// Multiplies q·k before the softmax.
    pub scale: f32,
}

/// A layer's keys or values: kv head g's rows (position p at `p · head_dim`) start at
/// `g · head_stride`; at least `cached + tokens` positions are valid.
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a> {
    pub data: &'a [f32],
    pub head_stride: usize,
}

impl KvRows<'_> {
    /// Positions `first..end` of kv head `g`: (end - first, head_dim) row-major.
    fn head(&self, g: usize, first: usize, end: usize, head_dim: usize) -> &[f32] {
        &self.data[g * self.head_stride..][first * head_dim..end * head_dim]
    }
}

/// out[i, h] = Σ_j softmax_j(scale · q[h, i] · k[g, j]) · v[g, j] over positions j ≤ cached + i
/// (and j > cached + i - window with a window), where g = h / (heads / kv_heads) is the kv head
/// query head h shares. With `sinks` (one per head), head h's sink logit joins the softmax's
/// normaliser and no value.
///
/// q: (heads, tokens, head_dim), out: (tokens, heads · head_dim), both row-major. `isa` is
/// capped at what this CPU has: a caller cannot ask for an instruction it lacks.
pub fn causal_attention(
    isa: Isa,
    q: &[f32],
    k: KvRows,
    v: KvRows,
    dims: AttentionDims,
    sinks: Option<&[f32]>,
    out: &mut [f32],
) {
    let AttentionDims {
        heads,
        kv_heads,
        head_dim: hd,
        tokens,
        cached,
        window,
        scale,
    } = dims;
    let isa = isa.min(Isa::best());
    let n_rep = heads / kv_heads;
    assert!(
        n_rep * kv_heads == heads
            && q.len() == heads * tokens * hd
            && out.len() == q.len()
            && sinks.is_none_or(|s| s.len() == heads),
        "attention buffers do not match {dims:?}"
    );
    // Task (i, g) writes token i's heads g · n_rep.. (g + 1) · n_rep: one contiguous chunk.
    let task = |(n, chunk): (usize, &mut [f32]), scores: &mut Vec<f32>| {
        let (i, g) = (n / kv_heads, n % kv_heads);
        let end = cached + i + 1;
        let first = window.map_or(0, |w| end.saturating_sub(w.max(1)));
        let len = end - first;
        let queries = (0..n_rep).map(|r| &q[((g * n_rep + r) * tokens + i) * hd..][..hd]);
        let group = Group {
            k: k.head(g, first, end, hd),
            v: v.head(g, first, end, hd),
            sinks: sinks.map(|s| &s[g * n_rep..(g + 1) * n_rep]),
            hd,
            scale,
        };
        scores.resize(n_rep * (len + 1), 0.0);
        match isa {
            // SAFETY: capped above at the kernels this CPU has.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe {
                group.run_avx512(queries, scores, chunk)
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { group.run_avx2(queries, scores, chunk) },
            _ => group.run(queries, scores, chunk),
        }
    };
    let context = (cached + tokens.div_ceil(2)).min(window.unwrap_or(usize::MAX));
    let macs = 2 * heads * tokens * context * hd;
    let chunks = out.chunks_mut(n_rep * hd).enumerate();
    if macs < PARALLEL_MIN_MACS {
        let mut scores = Vec::new();
        chunks.for_each(|c| task(c, &mut scores));
    } else {
        out.par_chunks_mut(n_rep * hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, c| task(c, scores));
    }
}

/// The query heads of one token that share one kv head, and that head's first `len` keys and
/// values.
struct Group<'a> {
    /// (len, hd)
    k: &'a [f32],
    /// (len, hd)
    v: &'a [f32],
    hd: usize,
    scale: f32,
    /// The sink logits of the group's n_rep query heads.
    sinks: Option<&'a [f32]>,
}

impl Group<'_> {
    /// `queries`: n_rep rows of hd; `scores`: (n_rep, len + 1) scratch; `out`: (n_rep, hd).
    /// Each key and each value row is read once for all the group's queries (the keys are
    /// the outer loop, then the values), and every sum is taken in the order of positions, as
    /// a query alone would take it.
    #[inline(always)]
    fn run<'q>(
        &self,
        queries: impl Iterator<Item = &'q [f32]> + Clone,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (hd, len) = (self.hd, self.k.len() / self.hd.max(1));
        let (scores, inv) = scores.split_at_mut(out.len() / hd.max(1) * len);
        for (j, key) in self.k.chunks_exact(hd).enumerate() {
            for (r, q) in queries.clone().enumerate() {
                scores[r * len + j] = dot(q, key) * self.scale;
            }
        }
        for (r, (scores, inv)) in scores
            .chunks_exact_mut(len.max(1))
            .zip(&mut *inv)
            .enumerate()
        {
            let sink = self.sinks.map(|s| s[r]);
            let max = scores
                .iter()
                .fold(sink.unwrap_or(f32::NEG_INFINITY), |m, &s| m.max(s));
            let mut sum = sink.map_or(0.0, |s| (s - max).exp());
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            *inv = 1.0 / sum;
        }
        out.fill(0.0);
        for (j, value) in self.v.chunks_exact(hd).enumerate() {
            for (r, out) in out.chunks_exact_mut(hd).enumerate() {
                let p = scores[r * len + j];
                for (o, x) in out.iter_mut().zip(value) {
                    *o += p * x;
                }
            }
        }
        for (out, &inv) in out.chunks_exact_mut(hd).zip(&*inv) {
            out.iter_mut().for_each(|o| *o *= inv);
        }
    }

    /// `run` compiled for AVX-512.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn run_avx512<'q>(
        &self,
        queries: impl Iterator<Item = &'q [f32]> + Clone,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        self.run(queries, scores, out)
    }

    /// `run` compiled for AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2<'q>(
        &self,
        queries: impl Iterator<Item = &'q [f32]> + Clone,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        self.run(queries, scores, out)
    }
}

/// Σ a[i]·b[i] over 16 independent lanes (one vector register under AVX-512), inlined so it
/// takes the caller's target features.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a16, b16) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 oracle, with the mask written out: every query against every position,
    /// future ones excluded; a head's sink as one more score that carries no value.
    fn slow(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: AttentionDims,
        scale: f64,
        sinks: Option<&[f32]>,
    ) -> Vec<f64> {
        let AttentionDims {
            heads,
            kv_heads,
            head_dim: hd,
            tokens,
            cached,
            window,
            ..
        } = dims;
        let s = cached + tokens;
        let mut out = vec![0f64; tokens * heads * hd];
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            for i in 0..tokens {
                let qi = &q[(h * tokens + i) * hd..][..hd];
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        if j > cached + i || window.is_some_and(|w| j + w <= cached + i) {
                            return f64::NEG_INFINITY;
                        }
                        let kj = &k[(g * s + j) * hd..][..hd];
                        scale
                            * qi.iter()
                                .zip(kj)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let sink = sinks.map(|s| s[h] as f64);
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let max = max.max(sink.unwrap_or(f64::NEG_INFINITY));
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
                for d in 0..hd {
                    out[(i * heads + h) * hd + d] = (0..s)
                        .map(|j| e[j] / sum * v[(g * s + j) * hd + d] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn every_kernel_family_matches_the_f64_oracle_over_cached_and_new_positions() {
        let val = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|j| (((j * 7919 + seed * 104_729) % 401) as f32 - 200.0) / 90.0)
                .collect()
        };
        // Decode over a cache, a prompt from empty, a chunk after a cache; grouped, multi-head
        // and head dims off the 16-lane grid; the last one large enough to run in parallel;
        // windows shorter than the context (decode and prefill), of one key, and longer.
        for (heads, kv_heads, hd, tokens, cached, window) in [
            (4, 2, 16, 1, 9, None),
            (4, 4, 8, 5, 0, None),
            (6, 2, 20, 3, 4, None),
            (16, 4, 64, 40, 200, None),
            (4, 2, 16, 1, 9, Some(4)),
            (4, 4, 8, 7, 3, Some(3)),
            (6, 2, 20, 3, 4, Some(1)),
            (16, 4, 64, 40, 200, Some(64)),
            (4, 2, 16, 5, 2, Some(100)),
        ] {
            let dims = AttentionDims {
                heads,
                kv_heads,
                head_dim: hd,
                tokens,
                cached,
                window,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let s = cached + tokens;
            let q = val(heads * tokens * hd, 1);
            // The kernel reads the cache through a head stride larger than its positions.
            let capacity = s + 3;
            let (k, v) = (val(kv_heads * s * hd, 2), val(kv_heads * s * hd, 3));
            let padded = |x: &[f32]| -> Vec<f32> {
                let mut buf = vec![f32::NAN; kv_heads * capacity * hd];
                for g in 0..kv_heads {
                    buf[g * capacity * hd..][..s * hd].copy_from_slice(&x[g * s * hd..][..s * hd]);
                }
                buf
            };
            let (kb, vb) = (padded(&k), padded(&v));
            let scale = dims.scale;
            // With sinks on the windowed cases: some above every score, some far below.
            let sinks: Option<Vec<f32>> =
                window.map(|_| (0..heads).map(|h| h as f32 * 1.5 - 4.0).collect());
            let sinks = sinks.as_deref();
            let want = slow(&q, &k, &v, dims, scale as f64, sinks);
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; q.len()];
                let rows = |data| KvRows {
                    data,
                    head_stride: capacity * hd,
                };
                let (k, v) = (rows(&kb), rows(&vb));
                causal_attention(isa, &q, k, v, dims, sinks, &mut out);
                for (n, (got, want)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (*got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{isa:?} {dims:?} element {n}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
