//! The grouped expert FFN on CPU: tokens sorted by expert, each expert's weights read once for
//! all of its tokens, work split over (expert, block of output rows) with rayon.
//!
//! Slow twin: `moe::reference::forward`, compared in tests/moe_paths.rs.

use rayon::prelude::*;

use super::isa::Isa;
use super::linear::{matmul_bt, OutView, PreparedLhs};
use super::storage::WeightSlice;
use super::vector::silu;
use crate::error::{Error, Result};

/// Output rows per parallel task: small enough that a decode step (one token, k experts) still
/// makes several tasks per thread, large enough that task overhead stays small. Tasks of
/// experts with many tokens are taller, so that widening or packing their weights pays off.
const ROWS_PER_TASK: usize = 64;
const ROWS_PER_MATMUL_TASK: usize = 256;

/// From this many tokens on an expert, its tasks take ROWS_PER_MATMUL_TASK rows.
const MATMUL_MIN_TOKENS: usize = 4;

/// Routing assignments sorted by expert (a counting sort, so tokens stay in order within an
/// expert). A slot is one (token, choice) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertGroups {
    /// Slots of expert e are `offsets[e]..offsets[e + 1]`; length E + 1.
    pub offsets: Vec<usize>,
    /// Token of each slot.
    pub slot_token: Vec<u32>,
    /// Routing weight of each slot.
    pub slot_weight: Vec<f32>,
    /// Slot of assignment `t * top_k + j`.
    pub assignment_slot: Vec<u32>,
    pub top_k: usize,
}

impl ExpertGroups {
    /// `experts` and `weights` are row-major (tokens, top_k); every id is below `num_experts`.
    pub fn new(experts: &[u32], weights: &[f32], num_experts: usize, top_k: usize) -> Self {
        let mut offsets = vec![0usize; num_experts + 1];
        for &e in experts {
            offsets[e as usize + 1] += 1;
        }
        for e in 0..num_experts {
            offsets[e + 1] += offsets[e];
        }
        let mut next = offsets.clone();
        let slots = experts.len();
        let mut slot_token = vec![0u32; slots];
        let mut slot_weight = vec![0f32; slots];
        let mut assignment_slot = vec![0u32; slots];
        for (a, (&e, &w)) in experts.iter().zip(weights).enumerate() {
            let s = next[e as usize];
            next[e as usize] += 1;
            slot_token[s] = (a / top_k.max(1)) as u32;
            slot_weight[s] = w;
            assignment_slot[a] = s as u32;
        }
        ExpertGroups {
            offsets,
            slot_token,
            slot_weight,
            assignment_slot,
            top_k,
        }
    }

    pub fn num_experts(&self) -> usize {
        self.offsets.len() - 1
    }

    fn count(&self, e: usize) -> usize {
        self.offsets[e + 1] - self.offsets[e]
    }
}

/// Stacked expert weights: `gate_up: [E, 2I, H]` (gate rows, then up rows), `down: [E, H, I]`,
/// both of one dtype.
#[derive(Clone, Copy)]
pub struct ExpertWeights<'a> {
    pub gate_up: WeightSlice<'a>,
    pub down: WeightSlice<'a>,
    pub hidden: usize,
    pub intermediate: usize,
}

/// out[t] = Σ_j weight(t, j) · down_e(silu(gate_e(x_t)) ⊙ up_e(x_t)) over token t's experts e.
///
/// xs and out: (tokens, hidden), row-major f32. Accumulates in f32 whatever the weights are.
pub fn grouped_ffn(
    isa: Isa,
    xs: &[f32],
    groups: &ExpertGroups,
    w: &ExpertWeights,
    out: &mut [f32],
) {
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
    let x_prepared = PreparedLhs::new(isa, &w.gate_up, &x_sorted, h);

    // Phase 1, per expert: act^T (I, count) = silu(Wg x^T) ⊙ (Wu x^T), transposed so that a
    // task owning a block of rows owns a contiguous piece of the buffer.
    let mut act_t = vec![0f32; slots * i];
    for_row_blocks(groups, &mut act_t, i, |e, n0, block, count| {
        let rows = block.len() / count;
        let first = groups.offsets[e];
        let x = x_prepared.rows(&x_sorted, first, count, h);
        let gate = w.gate_up.rows(e * 2 * i + n0, rows, h);
        let up = w.gate_up.rows(e * 2 * i + i + n0, rows, h);
        // g, u: (rows, count)
        let mut g = vec![0f32; rows * count];
        let mut u = vec![0f32; rows * count];
        let dims = (count, rows, h);
        matmul_bt(isa, x, &gate, dims, &mut OutView::transposed(&mut g, count));
        matmul_bt(isa, x, &up, dims, &mut OutView::transposed(&mut u, count));
        for ((o, g), u) in block.iter_mut().zip(&g).zip(&u) {
            *o = silu(*g) * u;
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
    });

    // Combine in token order, each token's choices best first.
    let k = groups.top_k;
    out.par_chunks_mut(h.max(1))
        .enumerate()
        .for_each(|(t, row)| {
            row.fill(0.0);
            for &s in &groups.assignment_slot[t * k..(t + 1) * k] {
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

/// `grouped_ffn` on the selected kernels, after checking that both weights share a dtype.
pub fn grouped_ffn_weights(
    xs: &[f32],
    groups: &ExpertGroups,
    w: &ExpertWeights,
    out: &mut [f32],
) -> Result<()> {
    if std::mem::discriminant(&w.gate_up) != std::mem::discriminant(&w.down) {
        return Err(Error::Candle(candle_core::Error::Msg(
            "expert gate_up and down weights differ in dtype".into(),
        )));
    }
    grouped_ffn(Isa::selected(), xs, groups, w, out);
    Ok(())
}

/// Splits `buf` (per expert e, a (rows, count_e) block starting at slot offset · rows) into
/// tasks of a few rows each and runs them in parallel as
/// `task(expert, first_row, block, count)`. Experts without tokens make no tasks.
fn for_row_blocks(
    groups: &ExpertGroups,
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
fn expert_of_slot(groups: &ExpertGroups, s: usize) -> usize {
    groups.offsets.partition_point(|&o| o <= s) - 1
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    #[test]
    fn groups_sort_by_expert_and_keep_token_order() {
        // 3 tokens, top-2, 4 experts; expert 3 gets nothing.
        let experts = [2, 0, 0, 1, 2, 0];
        let weights = [0.6, 0.4, 0.7, 0.3, 0.9, 0.1];
        let g = ExpertGroups::new(&experts, &weights, 4, 2);
        assert_eq!(g.offsets, vec![0, 3, 4, 6, 6]);
        assert_eq!(g.slot_token, vec![0, 1, 2, 1, 0, 2]);
        assert_eq!(g.slot_weight, vec![0.4, 0.7, 0.1, 0.3, 0.6, 0.9]);
        for (a, &s) in g.assignment_slot.iter().enumerate() {
            assert_eq!(g.slot_weight[s as usize], weights[a]);
        }
        assert_eq!(expert_of_slot(&g, 0), 0);
        assert_eq!(expert_of_slot(&g, 3), 1);
        assert_eq!(expert_of_slot(&g, 5), 2);
    }

    /// The slow twin, in f64 over bf16-rounded values: the same math token by token.
    fn slow(
        xs: &[f32],
        experts: &[u32],
        weights: &[f32],
        w: (&[f32], &[f32]),
        (h, i, k): (usize, usize, usize),
    ) -> Vec<f64> {
        let (gate_up, down) = w;
        let t = xs.len() / h;
        let mut out = vec![0f64; t * h];
        for tok in 0..t {
            let x = &xs[tok * h..][..h];
            for j in 0..k {
                let e = experts[tok * k + j] as usize;
                let proj = |row: usize| -> f64 {
                    let r = &gate_up[(e * 2 * i + row) * h..][..h];
                    r.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum()
                };
                let act: Vec<f64> = (0..i)
                    .map(|n| {
                        let g = proj(n);
                        g / (1.0 + (-g).exp()) * proj(i + n)
                    })
                    .collect();
                for m in 0..h {
                    let r = &down[(e * h + m) * i..][..i];
                    let y: f64 = r.iter().zip(&act).map(|(a, b)| *a as f64 * b).sum();
                    out[tok * h + m] += weights[tok * k + j] as f64 * y;
                }
            }
        }
        out
    }

    #[test]
    fn every_kernel_family_matches_the_slow_twin_with_an_idle_expert_and_a_crowded_one() {
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
        // One token; then 9 tokens that all pick expert 1 (a matrix-kernel block) and leave
        // expert 3 idle.
        for tokens in [1usize, 9] {
            let xs = val(tokens * h, 3);
            let experts: Vec<u32> = (0..tokens)
                .flat_map(|t| [1, (t % 3 == 0) as u32 * 2])
                .collect();
            let weights: Vec<f32> = (0..tokens * k)
                .map(|a| 0.3 + 0.1 * (a % 3) as f32)
                .collect();
            let groups = ExpertGroups::new(&experts, &weights, e, k);
            let want = slow(&xs, &experts, &weights, (&gate_up, &down), (h, i, k));
            let w = ExpertWeights {
                gate_up: WeightSlice::BF16(&gate_up_b),
                down: WeightSlice::BF16(&down_b),
                hidden: h,
                intermediate: i,
            };
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; tokens * h];
                grouped_ffn(isa, &xs, &groups, &w, &mut out);
                for (n, (got, want)) in out.iter().zip(&want).enumerate() {
                    // A bf16-dot kernel also rounds the activation to bf16 (2^-8 relative).
                    assert!(
                        (*got as f64 - want).abs() <= 1e-2 * want.abs() + 1e-3,
                        "{isa:?}, {tokens} tokens, element {n}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
