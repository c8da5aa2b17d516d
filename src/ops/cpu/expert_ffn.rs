//! The experts' FFN and the combine on the CPU: tokens sorted by expert (a `Dispatch`), each
//! expert's weights read once for all of its tokens, work split over (expert, block of output
//! rows) with rayon.
//!
//! Slow twin: `ops::reference::moe`, compared in the op table (ops/tests.rs); the unit tests
//! below check each kernel family against an f64 oracle at tighter bounds.

use rayon::prelude::*;

use super::isa::Isa;
use super::linear::{matmul_bt, OutView, PreparedLhs};
use crate::error::{Error, Result};
use crate::ops::reference::HostDispatch;
use crate::quant::WeightSlice;
use crate::spec::Activation;

/// Output rows per parallel task: small enough that a decode step (one token, k experts) still
/// makes several tasks per thread, large enough that task overhead stays small. Tasks of
/// experts with many tokens are taller, so that widening or packing their weights pays off.
const ROWS_PER_TASK: usize = 64;
const ROWS_PER_MATMUL_TASK: usize = 256;

/// From this many tokens on an expert, its tasks take ROWS_PER_MATMUL_TASK rows.
const MATMUL_MIN_TOKENS: usize = 4;

/// Stacked expert weights: the gate and up rows of each expert (`ExpertRows`), `down: [E, H,
/// I]`, each stack in its own format (a Q4_K_M file keeps some down projections in Q6_K; gate
/// and up share one); optional f32 biases `[E, 2I]` (gate, then up) and `[E, H]`.
#[derive(Clone, Copy)]
pub struct ExpertWeights<'a> {
    pub gate: ExpertRows<'a>,
    pub up: ExpertRows<'a>,
    pub down: WeightSlice<'a>,
    pub gate_up_bias: Option<&'a [f32]>,
    pub down_bias: Option<&'a [f32]>,
    pub hidden: usize,
    pub intermediate: usize,
    pub activation: Activation,
}

/// One projection (gate or up) of every expert in a stack: expert e's I rows start at row
/// `e · stride + first`. A joined `[E, 2I, H]` stack holds both (stride 2I, first 0 or I); a
/// GGUF file keeps each in its own `[E, I, H]` stack (stride I), read in place.
#[derive(Clone, Copy)]
pub struct ExpertRows<'a> {
    pub stack: WeightSlice<'a>,
    pub first: usize,
    pub stride: usize,
}

impl<'a> ExpertRows<'a> {
    /// The gate and up rows of a joined `[E, 2I, H]` stack.
    pub fn joined(gate_up: WeightSlice<'a>, intermediate: usize) -> [ExpertRows<'a>; 2] {
        let rows = |first| ExpertRows {
            stack: gate_up,
            first,
            stride: 2 * intermediate,
        };
        [rows(0), rows(intermediate)]
    }

    /// Each of `[E, I, H]` stacks of its own.
    pub fn separate(stack: WeightSlice<'a>, intermediate: usize) -> ExpertRows<'a> {
        ExpertRows {
            stack,
            first: 0,
            stride: intermediate,
        }
    }

    /// Rows `n0..n0 + count` of expert e's I rows (each of `k` values).
    fn rows(&self, e: usize, n0: usize, count: usize, k: usize) -> WeightSlice<'a> {
        self.stack.rows(e * self.stride + self.first + n0, count, k)
    }
}

/// Every slot's expert output, y_e(x_t) = down_e(act(gate_e(x_t), up_e(x_t))), laid out expert
/// by expert: expert e's block is (H, count_e), transposed so that each parallel task owns a
/// contiguous piece of it. `combine` reads it.
pub struct ExpertBlocks {
    data: Vec<f32>,
    hidden: usize,
}

/// out[t] = Σ_j weight(t, j) · y_e(x_t) over token t's experts e: `expert_ffn` then `combine`.
#[cfg(test)]
///
/// xs and out: (tokens, hidden), row-major f32. Accumulates in f32 whatever the weights are.
pub fn grouped_ffn(
    isa: Isa,
    xs: &[f32],
    groups: &HostDispatch,
    w: &ExpertWeights,
    out: &mut [f32],
) {
    let rows = expert_ffn(isa, xs, groups, w);
    combine(&rows, groups, out);
}

/// Each slot's expert output (see `ExpertBlocks`). xs: (tokens, hidden), row-major f32.
pub fn expert_ffn(isa: Isa, xs: &[f32], groups: &HostDispatch, w: &ExpertWeights) -> ExpertBlocks {
    let (h, i) = (w.hidden, w.intermediate);
    let slots = groups.slot_token.len();

    // Each slot's token row, gathered once: (slots, H), an expert's tokens contiguous.
    let mut x_sorted = vec![0f32; slots * h];
    x_sorted
        .par_chunks_mut(h.max(1))
        .zip(&groups.slot_token)
        .for_each(|(row, &t)| {
            row.copy_from_slice(&xs[t as usize * h..][..h]);
        });
    let x_prepared = PreparedLhs::new(isa, &w.gate.stack, &x_sorted, h);

    // Phase 1, per expert: act^T (I, count) = act(Wg x^T + bg, Wu x^T + bu), transposed so
    // that a task owning a block of rows owns a contiguous piece of the buffer.
    let mut act_t = vec![0f32; slots * i];
    for_row_blocks(groups, &mut act_t, i, |e, n0, block, count| {
        let rows = block.len() / count;
        let first = groups.offsets[e];
        let x = x_prepared.rows(&x_sorted, first, count, h);
        let gate = w.gate.rows(e, n0, rows, h);
        let up = w.up.rows(e, n0, rows, h);
        // g, u: (rows, count)
        let mut g = vec![0f32; rows * count];
        let mut u = vec![0f32; rows * count];
        let dims = (count, rows, h);
        matmul_bt(isa, x, &gate, dims, &mut OutView::transposed(&mut g, count));
        matmul_bt(isa, x, &up, dims, &mut OutView::transposed(&mut u, count));
        if let Some(bias) = w.gate_up_bias {
            let bias = &bias[e * 2 * i..][..2 * i];
            add_row_bias(&mut g, &bias[n0..][..rows], count);
            add_row_bias(&mut u, &bias[i + n0..][..rows], count);
        }
        for ((o, g), u) in block.iter_mut().zip(&g).zip(&u) {
            *o = w.activation.apply(*g, *u);
        }
    });

    // act: (slots, I), each slot's activations contiguous for the down projection.
    let mut act = vec![0f32; slots * i];
    act.par_chunks_mut(i.max(1))
        .enumerate()
        .for_each(|(s, row)| {
            let e = expert_of_slot(groups, s);
            let (first, count) = (groups.offsets[e], groups.count(e));
            let j = s - first;
            let src = &act_t[first * i..][..count * i];
            for (n, r) in row.iter_mut().enumerate() {
                *r = src[n * count + j];
            }
        });
    let act_prepared = PreparedLhs::new(isa, &w.down, &act, i);

    // Phase 2, per expert: y^T (H, count) = Wd act^T.
    let mut y_t = vec![0f32; slots * h];
    for_row_blocks(groups, &mut y_t, h, |e, m0, block, count| {
        let rows = block.len() / count;
        let first = groups.offsets[e];
        let act_e = act_prepared.rows(&act, first, count, i);
        let down = w.down.rows(e * h + m0, rows, i);
        let view = &mut OutView::transposed(block, count);
        matmul_bt(isa, act_e, &down, (count, rows, i), view);
        if let Some(bias) = w.down_bias {
            add_row_bias(block, &bias[e * h + m0..][..rows], count);
        }
    });
    ExpertBlocks {
        data: y_t,
        hidden: h,
    }
}

/// block: (rows, count) row-major; adds bias[r] to row r.
fn add_row_bias(block: &mut [f32], bias: &[f32], count: usize) {
    for (row, b) in block.chunks_exact_mut(count.max(1)).zip(bias) {
        row.iter_mut().for_each(|y| *y += b);
    }
}

/// `out[t] = Σ_j weight(t, j) · y(t, j)`, y(t, j) being the row of token t's j-th slot, summed
/// in token order, each token's choices best first (so the sum's order does not depend on the
/// batch). out: (tokens, hidden).
pub fn combine(rows: &ExpertBlocks, groups: &HostDispatch, out: &mut [f32]) {
    let (h, y_t) = (rows.hidden, &rows.data);
    let k = groups.top_k;
    out.par_chunks_mut(h.max(1))
        .enumerate()
        .for_each(|(t, row)| {
            row.fill(0.0);
            for &s in &groups.token_slot[t * k..(t + 1) * k] {
                let s = s as usize;
                let e = expert_of_slot(groups, s);
                let (first, count) = (groups.offsets[e], groups.count(e));
                let (j, weight) = (s - first, groups.slot_weight[s]);
                let src = &y_t[first * h..][..count * h];
                for (m, r) in row.iter_mut().enumerate() {
                    *r += weight * src[m * count + j];
                }
            }
        });
}

/// `expert_ffn` after checking what the kernels assume of the weights: gate and up in one
/// format (x is prepared once for both), the sizes the dispatch and the dims imply.
pub fn expert_ffn_checked(
    isa: Isa,
    xs: &[f32],
    groups: &HostDispatch,
    w: &ExpertWeights,
) -> Result<ExpertBlocks> {
    let (e, h, i) = (groups.num_experts(), w.hidden, w.intermediate);
    let fail = |m: String| Err(Error::Candle(candle_core::Error::Msg(m)));
    if std::mem::discriminant(&w.gate.stack) != std::mem::discriminant(&w.up.stack) {
        return fail("expert gate and up weights differ in format".into());
    }
    if w.gate_up_bias.is_some_and(|b| b.len() != e * 2 * i)
        || w.down_bias.is_some_and(|b| b.len() != e * h)
    {
        return fail(format!("expert biases do not fit {e} experts of {h}x{i}"));
    }
    if xs.len() != groups.tokens() * h {
        return fail(format!(
            "{} inputs for {} tokens of {h}",
            xs.len(),
            groups.tokens()
        ));
    }
    Ok(expert_ffn(isa, xs, groups, w))
}

/// Splits `buf` (per expert e, a (rows, count_e) block starting at slot offset · rows) into
/// tasks of a few rows each and runs them in parallel as
/// `task(expert, first_row, block, count)`. Experts without tokens make no tasks.
fn for_row_blocks(
    groups: &HostDispatch,
    buf: &mut [f32],
    rows: usize,
    task: impl Fn(usize, usize, &mut [f32], usize) + Sync,
) {
    let mut tasks = Vec::new();
    let mut rest = buf;
    for e in 0..groups.num_experts() {
        let count = groups.count(e);
        if count == 0 {
            continue;
        }
        let (mine, tail) = rest.split_at_mut(rows * count);
        rest = tail;
        let per_task = if count >= MATMUL_MIN_TOKENS {
            ROWS_PER_MATMUL_TASK
        } else {
            ROWS_PER_TASK
        };
        for (b, block) in mine.chunks_mut(per_task * count).enumerate() {
            tasks.push((e, b * per_task, block, count));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(e, first_row, block, count)| task(e, first_row, block, count));
}

/// The expert whose slot range holds `s` (binary search over the offsets).
fn expert_of_slot(groups: &HostDispatch, s: usize) -> usize {
    groups.offsets.partition_point(|&o| o <= s) - 1
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    #[test]
    fn each_slot_is_found_in_its_experts_range() {
        let g = HostDispatch::new(&[2, 0, 0, 1, 2, 0], &[0.5; 6], 4, 2);
        assert_eq!(expert_of_slot(&g, 0), 0);
        assert_eq!(expert_of_slot(&g, 3), 1);
        assert_eq!(expert_of_slot(&g, 5), 2);
    }

    /// The f64 oracle, over bf16-rounded values: the same math token by token, with
    /// biases of 1/8 of each row's index and the clamped SwiGLU when `clamped`.
    fn slow(
        xs: &[f32],
        experts: &[u32],
        weights: &[f32],
        w: (&[f32], &[f32]),
        (h, i, k): (usize, usize, usize),
        clamped: bool,
    ) -> Vec<f64> {
        let (gate_up, down) = w;
        let bias = |row: usize| if clamped { (row % 5) as f64 / 8.0 } else { 0.0 };
        let t = xs.len() / h;
        let mut out = vec![0f64; t * h];
        for tok in 0..t {
            let x = &xs[tok * h..][..h];
            for j in 0..k {
                let e = experts[tok * k + j] as usize;
                let proj = |row: usize| -> f64 {
                    let r = &gate_up[(e * 2 * i + row) * h..][..h];
                    let dot: f64 = r.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                    dot + bias(e * 2 * i + row)
                };
                let act: Vec<f64> = (0..i)
                    .map(|n| {
                        let (g, u) = (proj(n), proj(i + n));
                        if clamped {
                            let (g, u) = (g.min(0.05), u.clamp(-0.05, 0.05));
                            g / (1.0 + (-1.702 * g).exp()) * (u + 1.0)
                        } else {
                            g / (1.0 + (-g).exp()) * u
                        }
                    })
                    .collect();
                for m in 0..h {
                    let r = &down[(e * h + m) * i..][..i];
                    let dot: f64 = r.iter().zip(&act).map(|(a, b)| *a as f64 * b).sum();
                    let y = dot + bias(e * h + m);
                    out[tok * h + m] += weights[tok * k + j] as f64 * y;
                }
            }
        }
        out
    }

    #[test]
    fn every_kernel_family_matches_the_f64_oracle_with_an_idle_expert_and_a_crowded_one() {
        let (e, h, i, k) = (4, 40, 24, 2);
        let val = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|j| {
                    bf16::from_f32((((j * 7919 + seed) % 211) as f32 - 105.0) / 300.0).to_f32()
                })
                .collect()
        };
        let gate_up = val(e * 2 * i * h, 1);
        let down = val(e * h * i, 2);
        let gate_up_b: Vec<bf16> = gate_up.iter().map(|&v| bf16::from_f32(v)).collect();
        let down_b: Vec<bf16> = down.iter().map(|&v| bf16::from_f32(v)).collect();
        let bias = |n: usize| -> Vec<f32> { (0..n).map(|r| (r % 5) as f32 / 8.0).collect() };
        let (gate_up_bias, down_bias) = (bias(e * 2 * i), bias(e * h));
        // One token; then 9 tokens that all pick expert 1 (a matrix-kernel block) and leave
        // expert 3 idle; plain, then with gpt-oss's biases and clamp (a limit the values cross).
        for (tokens, clamped) in [(1usize, false), (9, false), (1, true), (9, true)] {
            let xs = val(tokens * h, 3);
            let experts: Vec<u32> = (0..tokens)
                .flat_map(|t| [1, (t % 3 == 0) as u32 * 2])
                .collect();
            let weights: Vec<f32> = (0..tokens * k)
                .map(|a| 0.3 + 0.1 * (a % 3) as f32)
                .collect();
            let groups = HostDispatch::new(&experts, &weights, e, k);
            let want = slow(
                &xs,
                &experts,
                &weights,
                (&gate_up, &down),
                (h, i, k),
                clamped,
            );
            let [gate, up] = ExpertRows::joined(WeightSlice::BF16(&gate_up_b), i);
            let w = ExpertWeights {
                gate,
                up,
                down: WeightSlice::BF16(&down_b),
                gate_up_bias: clamped.then_some(gate_up_bias.as_slice()),
                down_bias: clamped.then_some(down_bias.as_slice()),
                hidden: h,
                intermediate: i,
                activation: if clamped {
                    Activation::SwigluClamped {
                        alpha: 1.702,
                        limit: 0.05,
                    }
                } else {
                    Activation::SiluGated
                },
            };
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; tokens * h];
                grouped_ffn(isa, &xs, &groups, &w, &mut out);
                for (n, (got, want)) in out.iter().zip(&want).enumerate() {
                    // A bf16-dot kernel also rounds the activation to bf16 (2^-8 relative).
                    assert!(
                        (*got as f64 - want).abs() <= 1e-2 * want.abs() + 1e-3,
                        "{isa:?}, {tokens} tokens, clamped {clamped}, element {n}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
