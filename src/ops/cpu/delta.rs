//! The gated delta rule on host slices, one value head per task: token by token (the recurrent
//! form, for decode) or in chunks of CHUNK tokens (the chunked form, for prefill), both over
//! the head's (dk, dv) state in place. The slow twin is ops/reference/delta.rs.
//!
//! Per token t of a head, with q and k L2-normalised and q scaled by dk^-1/2:
//!
//! `S ← e^g S + k ⊗ β (v - e^g Sᵀk)`, `o = Sᵀq`.
//!
//! The chunked form is HF's `torch_chunk_gated_delta_rule`: within a chunk, the updates are
//! folded into one lower-triangular solve (the WY form: `(I + A) U = β v`, `(I + A) W = β k
//! e^{cum}` with `A[i][j] = β_i k_i·k_j e^{cum_i - cum_j}` below the diagonal), after which
//! the chunk reads and writes the state once instead of once per token.

use rayon::prelude::*;

use super::matmul::{gemm_strided, matmul_abt};
use super::Isa;

/// Tokens per chunk of the chunked form (HF's `chunk_size`).
pub const CHUNK: usize = 64;

/// One sequence's shapes: t tokens, nk key heads of dk, nv value heads of dv (nv a multiple
/// of nk: value head h reads key head h / (nv / nk)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaDims {
    pub t: usize,
    pub nk: usize,
    pub nv: usize,
    pub dk: usize,
    pub dv: usize,
}

/// The inputs, row-major: q and k (t, nk, dk) as projected (normalised here), v (t, nv, dv),
/// g (t, nv) the log decay and beta (t, nv) the write strength.
pub struct DeltaInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub g: &'a [f32],
    pub beta: &'a [f32],
}

/// Which form runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaForm {
    Recurrent,
    Chunked,
}

impl DeltaForm {
    /// The recurrent form for single tokens (decode), the chunked one for longer runs: for a
    /// prompt of 128 tokens of Qwen3.5-35B-A3B's linear layers (32 heads of 128 by 128), the
    /// rule alone takes 8.0-8.3 ms chunked, 10-11.6 ms token by token (Intel Xeon without AMX,
    /// 2 threads).
    pub fn for_tokens(t: usize) -> DeltaForm {
        if t == 1 {
            DeltaForm::Recurrent
        } else {
            DeltaForm::Chunked
        }
    }
}

/// Runs the rule over the t tokens: `state` (nv, dk, dv) is updated in place and `out`
/// (t, nv, dv) written, the token loops compiled for `isa` (element-wise arithmetic, the same
/// on every instruction set; the chunked form's products are the `gemm` crate's). Panics where the
/// slices do not hold what `d` says (the caller checked the tensors' shapes).
pub fn gated_delta(
    isa: Isa,
    d: DeltaDims,
    x: &DeltaInputs,
    state: &mut [f32],
    out: &mut [f32],
    form: DeltaForm,
) {
    let DeltaDims { t, nk, nv, dk, dv } = d;
    assert!(
        nk > 0
            && nv.is_multiple_of(nk)
            && x.q.len() == t * nk * dk
            && x.k.len() == t * nk * dk
            && x.v.len() == t * nv * dv
            && x.g.len() == t * nv
            && x.beta.len() == t * nv
            && state.len() == nv * dk * dv
            && out.len() == t * nv * dv,
        "gated delta rule: operand sizes"
    );
    if t == 0 {
        return;
    }
    let q = normalized(x.q, dk, (dk as f32).powf(-0.5));
    let k = normalized(x.k, dk, 1.0);
    let group = nv / nk;
    let heads: Vec<Vec<f32>> = state
        .par_chunks_mut(dk * dv)
        .enumerate()
        .map(|(h, s)| {
            let kh = h / group;
            // The head's rows, contiguous: (t, dk), (t, dk), (t, dv), (t), (t).
            let rows = |src: &[f32], heads: usize, head: usize, width: usize| -> Vec<f32> {
                let mut out = vec![0f32; t * width];
                for (i, row) in out.chunks_exact_mut(width).enumerate() {
                    row.copy_from_slice(&src[(i * heads + head) * width..][..width]);
                }
                out
            };
            let head = Head {
                q: rows(&q, nk, kh, dk),
                k: rows(&k, nk, kh, dk),
                v: rows(x.v, nv, h, dv),
                g: rows(x.g, nv, h, 1),
                beta: rows(x.beta, nv, h, 1),
                dk,
                dv,
            };
            let mut o = vec![0f32; t * dv];
            head.run(isa, form, s, &mut o);
            o
        })
        .collect();
    for (h, o) in heads.iter().enumerate() {
        for i in 0..t {
            out[(i * nv + h) * dv..][..dv].copy_from_slice(&o[i * dv..][..dv]);
        }
    }
}

/// Each row of `width` values divided by its L2 norm (HF's `l2norm`, eps 1e-6 inside the
/// root), times `scale`.
fn normalized(x: &[f32], width: usize, scale: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_mut(width) {
        let sum: f32 = row.iter().map(|v| v * v).sum();
        let f = scale / (sum + 1e-6).sqrt();
        row.iter_mut().for_each(|v| *v *= f);
    }
    out
}

/// One value head's inputs over the sequence, q and k already normalised.
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    dk: usize,
    dv: usize,
}

/// `y += a · x`, element by element.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

impl Head {
    fn tokens(&self) -> usize {
        self.g.len()
    }

    /// The form asked for, its loops compiled for the widest vectors `isa` allows.
    fn run(&self, isa: Isa, form: DeltaForm, s: &mut [f32], out: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the backend's instruction set is one the CPU has.
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { self.run_avx512(form, s, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.run_avx2(form, s, out) },
            _ => self.run_portable(form, s, out),
        }
    }

    #[inline(always)]
    fn run_portable(&self, form: DeltaForm, s: &mut [f32], out: &mut [f32]) {
        match form {
            DeltaForm::Recurrent => self.recurrent(s, out),
            DeltaForm::Chunked => self.chunked(s, out),
        }
    }

    /// # Safety
    /// The CPU has AVX-512 F and VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2")]
    unsafe fn run_avx512(&self, form: DeltaForm, s: &mut [f32], out: &mut [f32]) {
        self.run_portable(form, s, out)
    }

    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, form: DeltaForm, s: &mut [f32], out: &mut [f32]) {
        self.run_portable(form, s, out)
    }

    /// Token by token; s is (dk, dv).
    #[inline(always)]
    fn recurrent(&self, s: &mut [f32], out: &mut [f32]) {
        let (dk, dv) = (self.dk, self.dv);
        let mut predicted = vec![0f32; dv];
        for i in 0..self.tokens() {
            let (q, k) = (&self.q[i * dk..][..dk], &self.k[i * dk..][..dk]);
            let decay = self.g[i].exp();
            // Sᵀk, before the decay (applied to the sum instead of every entry).
            predicted.fill(0.0);
            for (r, &kr) in k.iter().enumerate() {
                axpy(&mut predicted, kr, &s[r * dv..][..dv]);
            }
            let delta: Vec<f32> = self.v[i * dv..][..dv]
                .iter()
                .zip(&predicted)
                .map(|(v, p)| (v - decay * p) * self.beta[i])
                .collect();
            let o = &mut out[i * dv..][..dv];
            for r in 0..dk {
                let row = &mut s[r * dv..][..dv];
                for (x, d) in row.iter_mut().zip(&delta) {
                    *x = decay * *x + k[r] * d;
                }
                axpy(o, q[r], row);
            }
        }
    }

    /// CHUNK tokens at a time; s is (dk, dv). The products of a chunk's rows with the state
    /// and with each other are matrix products (`gemm_strided`); the two triangular solves
    /// run row by row.
    #[inline(always)]
    fn chunked(&self, s: &mut [f32], out: &mut [f32]) {
        let (dk, dv) = (self.dk, self.dv);
        let t = self.tokens();
        for c0 in (0..t).step_by(CHUNK) {
            let len = CHUNK.min(t - c0);
            let q = &self.q[c0 * dk..][..len * dk];
            let k = &self.k[c0 * dk..][..len * dk];
            let v = &self.v[c0 * dv..][..len * dv];
            let beta = &self.beta[c0..][..len];
            // The log decay from the chunk's start to each token, in f32 as torch's cumsum.
            let cum: Vec<f32> = self.g[c0..][..len]
                .iter()
                .scan(0f32, |acc, &g| {
                    *acc += g;
                    Some(*acc)
                })
                .collect();
            // e^{cum_i - cum_j} for j <= i (the decay from token j to token i), once.
            let mut fall = vec![0f32; len * len];
            for i in 0..len {
                for j in 0..=i {
                    fall[i * len + j] = (cum[i] - cum[j]).exp();
                }
            }
            // A[i][j] = β_i k_i · k_j e^{cum_i - cum_j} below the diagonal, zero elsewhere.
            let mut a = vec![0f32; len * len];
            matmul_abt(k, k, (len, len, dk), (&mut a, len, 1));
            for i in 0..len {
                for j in 0..len {
                    a[i * len + j] = match j < i {
                        true => beta[i] * a[i * len + j] * fall[i * len + j],
                        false => 0.0,
                    };
                }
            }
            // (I + A) U = β v and (I + A) W = β k e^{cum}, by forward substitution.
            let mut u: Vec<f32> = v
                .chunks_exact(dv)
                .zip(beta)
                .flat_map(|(row, &b)| row.iter().map(move |x| x * b))
                .collect();
            let mut w: Vec<f32> = k
                .chunks_exact(dk)
                .zip(beta.iter().zip(&cum))
                .flat_map(|(row, (&b, &c))| {
                    let f = b * c.exp();
                    row.iter().map(move |x| x * f)
                })
                .collect();
            for i in 1..len {
                let (done, rest) = u.split_at_mut(i * dv);
                let (wdone, wrest) = w.split_at_mut(i * dk);
                for j in 0..i {
                    let aij = a[i * len + j];
                    axpy(&mut rest[..dv], -aij, &done[j * dv..][..dv]);
                    axpy(&mut wrest[..dk], -aij, &wdone[j * dk..][..dk]);
                }
            }
            // The new values: U less what the state before the chunk predicts, U - W S.
            let mut v_new = u;
            gemm_strided(
                (&mut v_new, dv, 1),
                (&w, dk, 1),
                (s, dv, 1),
                (len, dv, dk),
                (Some(1.0), -1.0),
            );
            // Outputs: the state before the chunk read by the decayed queries, plus the
            // chunk's own tokens up to each one (q_i · k_j e^{cum_i - cum_j}, j <= i).
            let qe: Vec<f32> = q
                .chunks_exact(dk)
                .zip(&cum)
                .flat_map(|(row, &c)| {
                    let e = c.exp();
                    row.iter().map(move |x| x * e)
                })
                .collect();
            let o = &mut out[c0 * dv..][..len * dv];
            gemm_strided(
                (o, dv, 1),
                (&qe, dk, 1),
                (s, dv, 1),
                (len, dv, dk),
                (None, 1.0),
            );
            let mut intra = vec![0f32; len * len];
            matmul_abt(q, k, (len, len, dk), (&mut intra, len, 1));
            for i in 0..len {
                for j in 0..len {
                    intra[i * len + j] *= match j <= i {
                        true => fall[i * len + j],
                        false => 0.0,
                    };
                }
            }
            gemm_strided(
                (o, dv, 1),
                (&intra, len, 1),
                (&v_new, dv, 1),
                (len, dv, len),
                (Some(1.0), 1.0),
            );
            // The state after the chunk: e^{cum_last} S + Σ_j k_j e^{cum_last - cum_j} ⊗ v_new_j.
            let last = cum[len - 1];
            let faded: Vec<f32> = k
                .chunks_exact(dk)
                .zip(&cum)
                .flat_map(|(row, &c)| {
                    let f = (last - c).exp();
                    row.iter().map(move |x| x * f)
                })
                .collect();
            // faded is (len, dk): its transpose (dk, len) has strides (1, dk).
            gemm_strided(
                (s, dv, 1),
                (&faded, 1, dk),
                (&v_new, dv, 1),
                (dk, dv, len),
                (Some(last.exp()), 1.0),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head's rule in f64, token by token, straight from the definition: the oracle for
    /// both forms.
    fn oracle(d: DeltaDims, x: &DeltaInputs, state: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let DeltaDims { t, nk, nv, dk, dv } = d;
        let mut s: Vec<f64> = state.iter().map(|&v| v as f64).collect();
        let mut out = vec![0f64; t * nv * dv];
        let norm = |v: &[f32], scale: f64| -> Vec<f64> {
            let n = (v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() + 1e-6).sqrt();
            v.iter().map(|&x| x as f64 * scale / n).collect()
        };
        for i in 0..t {
            for h in 0..nv {
                let kh = h / (nv / nk);
                let q = norm(&x.q[(i * nk + kh) * dk..][..dk], (dk as f64).powf(-0.5));
                let k = norm(&x.k[(i * nk + kh) * dk..][..dk], 1.0);
                let e = (x.g[i * nv + h] as f64).exp();
                let b = x.beta[i * nv + h] as f64;
                let s = &mut s[h * dk * dv..][..dk * dv];
                s.iter_mut().for_each(|v| *v *= e);
                for c in 0..dv {
                    let p: f64 = (0..dk).map(|r| s[r * dv + c] * k[r]).sum();
                    let delta = (x.v[(i * nv + h) * dv + c] as f64 - p) * b;
                    for r in 0..dk {
                        s[r * dv + c] += k[r] * delta;
                    }
                    out[(i * nv + h) * dv + c] = (0..dk).map(|r| s[r * dv + c] * q[r]).sum();
                }
            }
        }
        (out, s)
    }

    fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0)
            .map(|v| v * scale)
            .collect()
    }

    /// Both forms against the f64 oracle from a non-zero state, over lengths below, at and
    /// across chunk boundaries (none a multiple of the chunk but 64 itself), with value heads
    /// sharing key heads; and the state after a prompt, continued by single tokens, equals
    /// the state of the whole sequence at once.
    #[test]
    fn both_forms_follow_the_rule() {
        for (t, nk, nv, dk, dv) in [
            (1, 1, 1, 4, 3),
            (5, 2, 4, 6, 5),
            (64, 1, 2, 8, 8),
            (75, 2, 2, 12, 8),
            (130, 1, 3, 5, 7),
        ] {
            let d = DeltaDims { t, nk, nv, dk, dv };
            let q = values(t * nk * dk, 1, 1.0);
            let k = values(t * nk * dk, 2, 1.0);
            let v = values(t * nv * dv, 3, 2.0);
            // Log decays from about -2 to 0; write strengths in (0, 1).
            let g: Vec<f32> = values(t * nv, 4, 1.0).iter().map(|x| x - 1.0).collect();
            let beta: Vec<f32> = values(t * nv, 5, 0.5).iter().map(|x| x + 0.5).collect();
            let x = DeltaInputs {
                q: &q,
                k: &k,
                v: &v,
                g: &g,
                beta: &beta,
            };
            let state0 = values(nv * dk * dv, 6, 0.5);
            let (want_out, want_state) = oracle(d, &x, &state0);
            let scale = want_out.iter().fold(1f64, |m, v| m.max(v.abs()));
            let runs = Isa::available()
                .into_iter()
                .flat_map(|isa| [(isa, DeltaForm::Recurrent), (isa, DeltaForm::Chunked)]);
            for (isa, form) in runs {
                let mut state = state0.clone();
                let mut out = vec![f32::NAN; t * nv * dv];
                gated_delta(isa, d, &x, &mut state, &mut out, form);
                let close = |got: &[f32], want: &[f64]| {
                    got.iter()
                        .zip(want)
                        .all(|(&g, &w)| (g as f64 - w).abs() <= 2e-5 * scale)
                };
                assert!(close(&out, &want_out), "{isa:?} {form:?} output, {d:?}");
                assert!(close(&state, &want_state), "{isa:?} {form:?} state, {d:?}");
            }
        }
    }
}
