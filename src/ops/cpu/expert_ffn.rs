//! The grouped expert FFN on CPU: tokens sorted by expert, each expert's weights read once for
//! all of its tokens, work split over (expert, block of output rows) with rayon.
//!
//! Slow twin: `moe::reference::forward`, compared in tests/moe_paths.rs.

use rayon::prelude::*;

use super::matmul::matmul_abt;
use super::storage::WeightSlice;
use super::vector::{dot, silu, WeightElem};
use crate::error::{Error, Result};

/// Output rows per parallel task: small enough that a decode step (one token, k experts) still
/// makes many tasks for the pool, large enough that task overhead stays small. Matrix-kernel
/// blocks are taller, so that packing their operands pays off.
const ROWS_PER_TASK: usize = 32;
const ROWS_PER_MATMUL_TASK: usize = 256;

/// From this many tokens on an expert, its blocks go through a matrix kernel (register-blocked,
/// SIMD) rather than one dot product per (row, token): below it the work is a pass over the
/// weights, bound by memory, and the dot products read each weight exactly once.
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

/// Stacked expert weights: `gate_up: [E, 2I, H]` (gate rows, then up rows), `down: [E, H, I]`.
pub struct ExpertSlices<'a, W> {
    pub gate_up: &'a [W],
    pub down: &'a [W],
    pub hidden: usize,
    pub intermediate: usize,
}

/// out[t] = Σ_j weight(t, j) · down_e(silu(gate_e(x_t)) ⊙ up_e(x_t)) over token t's experts e.
///
/// xs and out: (tokens, hidden), row-major f32. Accumulates in f32 whatever `W` is.
pub fn grouped_ffn<W: WeightElem>(
    xs: &[f32],
    groups: &ExpertGroups,
    w: &ExpertSlices<W>,
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

    // Phase 1, per expert: act^T (I, count) = silu(Wg x^T) ⊙ (Wu x^T), transposed so that a
    // task owning a block of rows owns a contiguous piece of the buffer.
    let mut act_t = vec![0f32; slots * i];
    for_row_blocks(groups, &mut act_t, i, |e, n0, block, count| {
        let rows = block.len() / count;
        let x = &x_sorted[groups.offsets[e] * h..][..count * h];
        let gate = &w.gate_up[(e * 2 * i + n0) * h..][..rows * h];
        let up = &w.gate_up[(e * 2 * i + i + n0) * h..][..rows * h];
        let mut g = vec![0f32; rows * count];
        let mut u = vec![0f32; rows * count];
        project(gate, x, (rows, count, h), &mut g);
        project(up, x, (rows, count, h), &mut u);
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

    // Phase 2, per expert: y^T (H, count) = Wd act^T.
    let mut y_t = vec![0f32; slots * h];
    for_row_blocks(groups, &mut y_t, h, |e, m0, block, count| {
        let rows = block.len() / count;
        let down = &w.down[(e * h + m0) * i..][..rows * i];
        let act_e = &act[groups.offsets[e] * i..][..count * i];
        project(down, act_e, (rows, count, i), block);
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

/// out (rows, count) = w (rows, k) · x (count, k)ᵀ, accumulated in f32 whatever W is.
fn project<W: WeightElem>(
    w: &[W],
    x: &[f32],
    (rows, count, k): (usize, usize, usize),
    out: &mut [f32],
) {
    if count >= MATMUL_MIN_TOKENS {
        let mut scratch = vec![0f32; if W::IS_F32 { 0 } else { rows * k }];
        matmul_abt(W::as_f32(w, &mut scratch), x, (rows, count, k), out);
        return;
    }
    let mut scratch = vec![0f32; if W::IS_F32 { 0 } else { k }];
    for (r, out_row) in out.chunks_mut(count).enumerate() {
        let w_row = W::as_f32(&w[r * k..][..k], &mut scratch);
        for (j, o) in out_row.iter_mut().enumerate() {
            *o = dot(w_row, &x[j * k..][..k]);
        }
    }
}

/// `grouped_ffn` over weights of a dtype known only at run time; both tensors must share it.
pub fn grouped_ffn_weights(
    xs: &[f32],
    groups: &ExpertGroups,
    gate_up: WeightSlice,
    down: WeightSlice,
    (hidden, intermediate): (usize, usize),
    out: &mut [f32],
) -> Result<()> {
    fn run<W: WeightElem>(
        xs: &[f32],
        groups: &ExpertGroups,
        (gate_up, down): (&[W], &[W]),
        (hidden, intermediate): (usize, usize),
        out: &mut [f32],
    ) {
        let w = ExpertSlices {
            gate_up,
            down,
            hidden,
            intermediate,
        };
        grouped_ffn(xs, groups, &w, out);
    }
    let dims = (hidden, intermediate);
    match (gate_up, down) {
        (WeightSlice::F32(a), WeightSlice::F32(b)) => run(xs, groups, (a, b), dims, out),
        (WeightSlice::BF16(a), WeightSlice::BF16(b)) => run(xs, groups, (a, b), dims, out),
        (WeightSlice::F16(a), WeightSlice::F16(b)) => run(xs, groups, (a, b), dims, out),
        _ => {
            return Err(Error::Candle(candle_core::Error::Msg(
                "expert gate_up and down weights differ in dtype".into(),
            )))
        }
    }
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
}
