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
    /// The recurrent form for single tokens (decode), the chunked one for longer runs.
    pub fn for_tokens(t: usize) -> DeltaForm {
        if t == 1 {
            DeltaForm::Recurrent
        } else {
            DeltaForm::Chunked
        }
    }
}

/// Runs the rule over the t tokens: `state` (nv, dk, dv) is updated in place and `out`
/// (t, nv, dv) written. Panics where the slices do not hold what `d` says (the caller checked
/// the tensors' shapes).
pub fn gated_delta(
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
                (0..t)
                    .flat_map(|i| &src[(i * heads + head) * width..][..width])
                    .copied()
                    .collect()
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
            match form {
                DeltaForm::Recurrent => head.recurrent(s, &mut o),
                DeltaForm::Chunked => head.chunked(s, &mut o),
            }
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
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

impl Head {
    fn tokens(&self) -> usize {
        self.g.len()
    }

    /// Token by token; s is (dk, dv).
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

    /// CHUNK tokens at a time; s is (dk, dv).
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
            let row = |m: &[f32], i: usize, w: usize| m[i * w..(i + 1) * w].to_vec();
            // A[i][j], j < i: β_i k_i · k_j e^{cum_i - cum_j}; the solves for U and W by
            // forward substitution, one row at a time.
            let mut u = vec![0f32; len * dv];
            let mut w = vec![0f32; len * dk];
            for i in 0..len {
                let ki = &k[i * dk..][..dk];
                let mut ui: Vec<f32> = row(v, i, dv).iter().map(|x| x * beta[i]).collect();
                let mut wi: Vec<f32> = ki.iter().map(|x| x * beta[i] * cum[i].exp()).collect();
                for j in 0..i {
                    let a = beta[i] * dot(ki, &k[j * dk..][..dk]) * (cum[i] - cum[j]).exp();
                    axpy(&mut ui, -a, &u[j * dv..][..dv]);
                    axpy(&mut wi, -a, &w[j * dk..][..dk]);
                }
                u[i * dv..][..dv].copy_from_slice(&ui);
                w[i * dk..][..dk].copy_from_slice(&wi);
            }
            // The new values: U less what the state before the chunk predicts, W S.
            let mut v_new = u;
            for i in 0..len {
                let vi = &mut v_new[i * dv..][..dv];
                for r in 0..dk {
                    axpy(vi, -w[i * dk + r], &s[r * dv..][..dv]);
                }
            }
            // Outputs: the state before the chunk read by the decayed query, plus the chunk's
            // own tokens up to this one.
            for i in 0..len {
                let qi = &q[i * dk..][..dk];
                let o = &mut out[(c0 + i) * dv..][..dv];
                let e = cum[i].exp();
                for r in 0..dk {
                    axpy(o, qi[r] * e, &s[r * dv..][..dv]);
                }
                for j in 0..=i {
                    let a = dot(qi, &k[j * dk..][..dk]) * (cum[i] - cum[j]).exp();
                    axpy(o, a, &v_new[j * dv..][..dv]);
                }
            }
            // The state after the chunk.
            let last = cum[len - 1];
            let fade: Vec<f32> = cum.iter().map(|&c| (last - c).exp()).collect();
            for r in 0..dk {
                let sr = &mut s[r * dv..][..dv];
                let e = last.exp();
                sr.iter_mut().for_each(|x| *x *= e);
                for j in 0..len {
                    axpy(sr, k[j * dk + r] * fade[j], &v_new[j * dv..][..dv]);
                }
            }
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
            for form in [DeltaForm::Recurrent, DeltaForm::Chunked] {
                let mut state = state0.clone();
                let mut out = vec![f32::NAN; t * nv * dv];
                gated_delta(d, &x, &mut state, &mut out, form);
                let close = |got: &[f32], want: &[f64]| {
                    got.iter()
                        .zip(want)
                        .all(|(&g, &w)| (g as f64 - w).abs() <= 2e-5 * scale)
                };
                assert!(close(&out, &want_out), "{form:?} output, {d:?}");
                assert!(close(&state, &want_state), "{form:?} state, {d:?}");
            }
        }
    }
}
