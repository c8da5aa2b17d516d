//! Causal grouped-query attention on the CPU, in f32, straight over the KV cache's buffers.
//!
//! Why our own: attention through candle's ops is a dozen tensors per layer (scores, scale,
//! mask, softmax, the weighted sum, reshapes), and candle's CPU matmul asks the OS for the core
//! count on every call (it reads /proc/cpuinfo): at decode that fixed cost, not the few
//! kilobytes of cache read, was the price of attention. Here one task per (token, kv head)
//! scores, normalises and sums in one pass with one scratch row, and the query heads that share
//! a kv head read each key and value row once between them. Where a call has too few (token,
//! kv head) pairs to share out (latent attention's decode: one kv head for every query head),
//! a kv head's query heads are split between a few tasks, each reading the rows once. Long
//! contexts would rather split the positions and merge the softmax statistics
//! (flash-decoding); not done yet.
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
    /// Width of queries and keys.
    pub head_dim: usize,
    /// Width of values, and of each head's output (latent attention's differs from the keys').
    pub value_dim: usize,
    pub tokens: usize,
    pub cached: usize,
    /// Keys each query sees, its own included (sliding-window attention); `None`: all.
    pub window: Option<usize>,
    /// Multiplies q·k before the softmax.
    pub scale: f32,
}

/// A layer's keys or values: kv head g's rows start at `g · head_stride`, position p's at
/// `p · row_stride` after that (a row may be the first part of a wider one: latent attention
/// reads its values as the first columns of its keys); at least `cached + tokens` positions are
/// valid.
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a> {
    pub data: &'a [f32],
    pub head_stride: usize,
    pub row_stride: usize,
}

impl<'a> KvRows<'a> {
    /// Positions `first..end` of kv head `g`, each row `width` values at `row_stride` apart.
    fn head(&self, g: usize, first: usize, end: usize, width: usize) -> Rows<'a> {
        let len = end - first;
        let start = g * self.head_stride + first * self.row_stride;
        let span = match len {
            0 => 0,
            _ => (len - 1) * self.row_stride + width,
        };
        Rows {
            data: &self.data[start..start + span],
            stride: self.row_stride,
            width,
            len,
        }
    }
}

/// `len` rows of `width` values, `stride` apart.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    stride: usize,
    width: usize,
    len: usize,
}

impl<'a> Rows<'a> {
    fn iter(self) -> impl Iterator<Item = &'a [f32]> {
        (0..self.len).map(move |j| &self.data[j * self.stride..][..self.width])
    }
}

/// out[i, h] = Σ_j softmax_j(scale · q[h, i] · k[g, j]) · v[g, j] over positions j ≤ cached + i
/// (and j > cached + i - window with a window), where g = h / (heads / kv_heads) is the kv head
/// query head h shares. With `sinks` (one per head), head h's sink logit joins the softmax's
/// normaliser and no value.
///
/// q: (heads, tokens, head_dim), out: (tokens, heads · value_dim), both row-major. `isa` is
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
        value_dim: dv,
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
            && out.len() == heads * tokens * dv
            && k.row_stride >= hd
            && v.row_stride >= dv
            && sinks.is_none_or(|s| s.len() == heads),
        "attention buffers do not match {dims:?}"
    );
    let context = (cached + tokens.div_ceil(2)).min(window.unwrap_or(usize::MAX));
    let macs = heads * tokens * context * (hd + dv);
    // Tasks of `split` query heads: a kv head's whole group where (token, kv head) pairs are
    // enough to share out, fewer where they are not (latent attention's decode step is one
    // kv head for every query head); each task reads its kv head's rows once for its heads.
    // (Each task reads its kv head's rows: a few per thread balance the load without reading
    // the rows many times over.)
    let pairs = tokens * kv_heads;
    let wanted = 2 * rayon::current_num_threads();
    let split = match macs < PARALLEL_MIN_MACS || pairs >= wanted {
        true => n_rep,
        false => n_rep.div_ceil(wanted.div_ceil(pairs)).max(1),
    };
    let per_group = n_rep.div_ceil(split);
    // Task n covers token i's heads from g · n_rep + c · split, `split` of them or the group's
    // rest: one contiguous chunk of out.
    let task = |n: usize, chunk: &mut [f32], scores: &mut Vec<f32>| {
        let (i, rest) = (n / (kv_heads * per_group), n % (kv_heads * per_group));
        let (g, c) = (rest / per_group, rest % per_group);
        let first_head = g * n_rep + c * split;
        let count = chunk.len() / dv;
        let end = cached + i + 1;
        let first = window.map_or(0, |w| end.saturating_sub(w.max(1)));
        let len = end - first;
        let queries = (first_head..first_head + count).map(|h| &q[(h * tokens + i) * hd..][..hd]);
        let group = Group {
            k: k.head(g, first, end, hd),
            v: v.head(g, first, end, dv),
            sinks: sinks.map(|s| &s[first_head..first_head + count]),
            scale,
        };
        scores.resize(count * (len + 1), 0.0);
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
    // The chunks in task order: per token, per kv head, per split of its query heads.
    let chunks = out
        .chunks_mut(n_rep * dv)
        .flat_map(|group| group.chunks_mut(split * dv))
        .enumerate();
    if macs < PARALLEL_MIN_MACS {
        let mut scores = Vec::new();
        chunks.for_each(|(n, c)| task(n, c, &mut scores));
    } else {
        let chunks: Vec<(usize, &mut [f32])> = chunks.collect();
        chunks
            .into_par_iter()
            .for_each_init(Vec::new, |scores, (n, c)| task(n, c, scores));
    }
}

/// Some of the query heads of one token that share one kv head, and that head's first `len`
/// keys and values.
struct Group<'a> {
    k: Rows<'a>,
    v: Rows<'a>,
    scale: f32,
    /// The sink logits of the group's query heads.
    sinks: Option<&'a [f32]>,
}

impl Group<'_> {
    /// `queries`: one row of the key width per head; `scores`: (heads, len + 1) scratch;
    /// `out`: (heads, value width). Each key and each value row is read once for all the
    /// group's queries (the keys are the outer loop, then the values), and every sum is taken
    /// in the order of positions, as a query alone would take it.
    #[inline(always)]
    fn run<'q>(
        &self,
        queries: impl Iterator<Item = &'q [f32]> + Clone,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (dv, len) = (self.v.width, self.k.len);
        let (scores, inv) = scores.split_at_mut(out.len() / dv.max(1) * len);
        for (j, key) in self.k.iter().enumerate() {
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
        for (j, value) in self.v.iter().enumerate() {
            for (r, out) in out.chunks_exact_mut(dv).enumerate() {
                let p = scores[r * len + j];
                for (o, x) in out.iter_mut().zip(value) {
                    *o += p * x;
                }
            }
        }
        for (out, &inv) in out.chunks_exact_mut(dv).zip(&*inv) {
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
            value_dim: dv,
            tokens,
            cached,
            window,
            ..
        } = dims;
        let s = cached + tokens;
        let mut out = vec![0f64; tokens * heads * dv];
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
                for d in 0..dv {
                    out[(i * heads + h) * dv + d] = (0..s)
                        .map(|j| e[j] / sum * v[(g * s + j) * dv + d] as f64)
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
        // Values narrower and wider than the keys; latent attention's form (one kv head for
        // all query heads, values the first columns of the keys' rows), at decode split
        // between tasks.
        for (heads, kv_heads, hd, dv, tokens, cached, window, shared) in [
            (4, 2, 16, 16, 1, 9, None, false),
            (4, 4, 8, 8, 5, 0, None, false),
            (6, 2, 20, 20, 3, 4, None, false),
            (16, 4, 64, 64, 40, 200, None, false),
            (4, 2, 16, 16, 1, 9, Some(4), false),
            (4, 4, 8, 8, 7, 3, Some(3), false),
            (6, 2, 20, 20, 3, 4, Some(1), false),
            (16, 4, 64, 64, 40, 200, Some(64), false),
            (4, 2, 16, 16, 5, 2, Some(100), false),
            (6, 2, 20, 12, 3, 4, None, false),
            (4, 1, 8, 24, 5, 6, None, false),
            (8, 1, 24, 16, 5, 6, None, true),
            (20, 1, 40, 32, 1, 300, None, true),
            (20, 1, 40, 32, 9, 300, None, true),
            (16, 2, 64, 64, 1, 300, None, false),
            (16, 2, 64, 64, 1, 300, Some(100), false),
        ] {
            let dims = AttentionDims {
                heads,
                kv_heads,
                head_dim: hd,
                value_dim: dv,
                tokens,
                cached,
                window,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let s = cached + tokens;
            let q = val(heads * tokens * hd, 1);
            let k = val(kv_heads * s * hd, 2);
            // Shared: each value row is the first dv columns of its key row.
            let v: Vec<f32> = match shared {
                true => k.chunks_exact(hd).flat_map(|r| &r[..dv]).copied().collect(),
                false => val(kv_heads * s * dv, 3),
            };
            // The kernel reads the cache through a head stride larger than its positions, and
            // rows wider than what it reads of them.
            let capacity = s + 3;
            let (k_stride, v_stride) = (hd + 2, if shared { hd + 2 } else { dv + 1 });
            let padded = |x: &[f32], width: usize, stride: usize| -> Vec<f32> {
                let mut buf = vec![f32::NAN; kv_heads * capacity * stride];
                for (n, row) in x.chunks_exact(width).enumerate() {
                    let (g, p) = (n / s, n % s);
                    buf[(g * capacity + p) * stride..][..width].copy_from_slice(row);
                }
                buf
            };
            let kb = padded(&k, hd, k_stride);
            let vb = match shared {
                true => kb.clone(),
                false => padded(&v, dv, v_stride),
            };
            let scale = dims.scale;
            // With sinks on the windowed cases: some above every score, some far below.
            let sinks: Option<Vec<f32>> =
                window.map(|_| (0..heads).map(|h| h as f32 * 1.5 - 4.0).collect());
            let sinks = sinks.as_deref();
            let want = slow(&q, &k, &v, dims, scale as f64, sinks);
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; heads * tokens * dv];
                let rows = |data, row_stride: usize| KvRows {
                    data,
                    head_stride: capacity * row_stride,
                    row_stride,
                };
                let (k, v) = (rows(&kb, k_stride), rows(&vb, v_stride));
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
