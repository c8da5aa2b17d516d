//! Every kernel against its CPU twin on the edge cases. Without a GPU each test says it skipped
//! and passes, unless MOE_REQUIRE_CUDA=1: CI compiles them (feature `cuda`), the GPU machine
//! runs them with that set.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ffn::GEMM_TILE;
use super::route::Choice;
use super::*;
use crate::ops::reference::{HostDispatch, HostRouting};
use crate::spec::RouterSpec;

use crate::device::gpu_for_tests as gpu;

fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|x| x / sum).collect()
}

/// Same experts, or (where the float order of the two sides differs) experts whose scores
/// are a near-tie; weights within `tol`.
fn assert_same_choice(
    scores: &[Vec<f32>],
    (gpu_experts, gpu_weights): (&[u32], &[f32]),
    (cpu_experts, cpu_weights): (&[u32], &[f32]),
    k: usize,
    tol: f32,
) {
    for (a, (&g, &c)) in gpu_experts.iter().zip(cpu_experts).enumerate() {
        let row = &scores[a / k];
        assert!(
            g == c || (row[g as usize] - row[c as usize]).abs() < 1e-6,
            "choice {a}: GPU {g}, CPU {c}"
        );
        assert!(
            (gpu_weights[a] - cpu_weights[a]).abs() <= tol,
            "weight {a}: {} vs {}",
            gpu_weights[a],
            cpu_weights[a]
        );
    }
}

fn to_host<T: candle_core::WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

#[test]
fn softmax_routing_matches_the_cpu_router() {
    let Some(dev) = gpu() else { return };
    let cases = [
        (1, 8, 2),
        (7, 60, 4),
        (4096, 128, 8),
        (33, 512, 32),
        (5, 8, 8),
        (3, 1, 1),
    ];
    for (i, &(tokens, e, k)) in cases.iter().enumerate() {
        for renormalise in [false, true] {
            for dtype in [DType::F32, DType::BF16] {
                let logits = Tensor::from_vec(random(tokens * e, 4.0, i as u64), (tokens, e), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                // The CPU routes the same (rounded) logits.
                let host: Vec<f32> = to_host(&logits.to_dtype(DType::F32).unwrap());
                let spec = RouterSpec::softmax_top_k(k, renormalise);
                let cpu = HostRouting::route(&host, e, &spec, None).unwrap();
                let (experts, weights) = route(
                    &logits,
                    k,
                    Scoring::Softmax,
                    renormalise,
                    1.0,
                    Choice::default(),
                )
                .unwrap();
                let scores: Vec<Vec<f32>> = host.chunks(e).map(softmax).collect();
                assert_same_choice(
                    &scores,
                    (&to_host::<u32>(&experts), &to_host::<f32>(&weights)),
                    (&cpu.experts, &cpu.weights),
                    k,
                    1e-5,
                );
            }
        }
    }
}

/// DeepSeek-V3's rules against the host router: the selection bias (some large enough to move
/// the choice, some negative enough that a kept group's values fall below zero) and groups
/// (DeepSeek-V3's 8 of 256 keeping 4, one expert per group, all groups kept, 32 groups).
#[test]
fn grouped_routing_with_a_selection_bias_matches_the_cpu_router() {
    use crate::spec::{GroupLimit, Scoring as SpecScoring};
    let Some(dev) = gpu() else { return };
    let cases = [
        (64, 256, 8, 8, 4),
        (33, 8, 2, 4, 2),
        (7, 16, 3, 16, 5),
        (9, 64, 4, 4, 4),
        (5, 512, 32, 32, 3),
        (4096, 128, 8, 8, 2),
    ];
    for (i, &(tokens, e, k, groups, keep)) in cases.iter().enumerate() {
        for bias_scale in [0.05f32, 2.0] {
            for dtype in [DType::F32, DType::BF16] {
                let seed = 100 + i as u64;
                let logits = Tensor::from_vec(random(tokens * e, 4.0, seed), (tokens, e), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let bias_host: Vec<f32> = random(e, bias_scale, seed + 50)
                    .iter()
                    .map(|b| b - bias_scale / 2.0)
                    .collect();
                let bias = Tensor::from_vec(bias_host.clone(), e, &dev).unwrap();
                let host: Vec<f32> = to_host(&logits.to_dtype(DType::F32).unwrap());
                let spec = RouterSpec {
                    scoring: SpecScoring::Sigmoid,
                    correction_bias: true,
                    group_limit: Some(GroupLimit { groups, keep }),
                    renormalise: true,
                    scale: 2.5,
                    ..RouterSpec::softmax_top_k(k, true)
                };
                let cpu = HostRouting::route(&host, e, &spec, Some(&bias_host)).unwrap();
                let choice = Choice {
                    bias: Some(&bias),
                    groups: Some((groups, keep)),
                };
                let (experts, weights) =
                    route(&logits, k, Scoring::Sigmoid, true, 2.5, choice).unwrap();
                // Near-ties are judged by the biased scores that chose.
                let scores: Vec<Vec<f32>> = host
                    .chunks(e)
                    .map(|r| {
                        r.iter()
                            .zip(&bias_host)
                            .map(|(x, b)| 1.0 / (1.0 + (-x).exp()) + b)
                            .collect()
                    })
                    .collect();
                assert_same_choice(
                    &scores,
                    (&to_host::<u32>(&experts), &to_host::<f32>(&weights)),
                    (&cpu.experts, &cpu.weights),
                    k,
                    1e-5,
                );
            }
        }
    }
    // Groups the kernel cannot rank are refused, not misread.
    let logits = Tensor::zeros((1, 64), DType::F32, &dev).unwrap();
    for groups in [(33, 1), (3, 1), (4, 0), (4, 5)] {
        let choice = Choice {
            bias: None,
            groups: Some(groups),
        };
        assert!(route(&logits, 2, Scoring::Sigmoid, true, 1.0, choice).is_err());
    }
}

#[test]
fn routing_ties_go_to_the_lower_expert_index() {
    let Some(dev) = gpu() else { return };
    let logits = Tensor::new(&[[1f32, 5.0, 5.0, 5.0, 0.0], [0.5; 5]], &dev).unwrap();
    let (experts, _) = route(&logits, 2, Scoring::Softmax, false, 1.0, Choice::default()).unwrap();
    assert_eq!(to_host::<u32>(&experts), [1, 2, 0, 1]);
    // Exact ties in bf16, wider than a warp.
    let flat = Tensor::ones((2, 200), DType::BF16, &dev).unwrap();
    let (experts, weights) =
        route(&flat, 3, Scoring::Sigmoid, true, 1.0, Choice::default()).unwrap();
    assert_eq!(to_host::<u32>(&experts), [0, 1, 2, 0, 1, 2]);
    for w in to_host::<f32>(&weights) {
        assert!((w - 1.0 / 3.0).abs() < 1e-6);
    }
}

#[test]
fn sigmoid_routing_with_a_scale_matches_its_twin() {
    let Some(dev) = gpu() else { return };
    let (tokens, e, k, scale) = (64, 256, 8, 2.5f32);
    let host = random(tokens * e, 6.0, 9);
    let logits = Tensor::from_vec(host.clone(), (tokens, e), &dev).unwrap();
    let (experts, weights) =
        route(&logits, k, Scoring::Sigmoid, true, scale, Choice::default()).unwrap();
    let scores: Vec<Vec<f32>> = host
        .chunks(e)
        .map(|r| r.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect())
        .collect();
    let (mut want_e, mut want_w) = (Vec::new(), Vec::new());
    for row in &scores {
        let mut order: Vec<usize> = (0..e).collect();
        // Stable: equal scores keep the lower index first.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let sum: f32 = order[..k].iter().map(|&i| row[i]).sum();
        for &i in &order[..k] {
            want_e.push(i as u32);
            want_w.push(row[i] / sum * scale);
        }
    }
    assert_same_choice(
        &scores,
        (&to_host::<u32>(&experts), &to_host::<f32>(&weights)),
        (&want_e, &want_w),
        k,
        1e-5,
    );
}

#[test]
fn alignment_matches_the_cpu_grouping_padded_to_tiles() {
    let Some(dev) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut cases: Vec<(usize, usize, Vec<u32>)> = vec![
        (64, 2, vec![3, 40, 40, 9, 63, 0]), // most experts empty
        (8, 2, vec![5; 2 * 300]),           // every token on one expert
        (128, 8, (0..8).collect()),         // one token
        (8, 2, Vec::new()),                 // no tokens: a view of no rows, since
                                            // the driver allocates nothing empty
    ];
    let many: Vec<u32> = (0..4096 * 8).map(|_| rng.random_range(0..128)).collect();
    cases.push((128, 8, many));
    for (e, k, ids) in cases {
        for tile in [1, 16, 64] {
            let tokens = ids.len() / k;
            let mut backing = ids.clone();
            backing.resize(ids.len().max(k), 0);
            let t = Tensor::from_vec(backing, (ids.len().max(k) / k, k), &dev)
                .unwrap()
                .narrow(0, 0, tokens)
                .unwrap();
            let a = align(&t, e, tile).unwrap();
            let groups = HostDispatch::new(&ids, &vec![0.0; ids.len()], e, k);
            let counts: Vec<u32> = (0..e)
                .map(|x| (groups.offsets[x + 1] - groups.offsets[x]) as u32)
                .collect();
            assert_eq!(to_host::<u32>(&a.counts), counts);
            let mut padded = vec![0u32; e + 1];
            for x in 0..e {
                padded[x + 1] = padded[x] + counts[x].div_ceil(tile as u32) * tile as u32;
            }
            assert_eq!(to_host::<u32>(&a.offsets), padded, "E {e} tile {tile}");
            let total = padded[e] as usize;
            let num_tiles = total / tile;
            assert_eq!(to_host::<u32>(&a.num_tiles), [num_tiles as u32]);
            let active: Vec<u32> = (0..e as u32).filter(|&x| counts[x as usize] > 0).collect();
            assert_eq!(to_host::<u32>(&a.num_active), [active.len() as u32]);
            assert_eq!(
                &to_host::<u32>(&a.active_experts)[..active.len()],
                &active[..]
            );
            let tile_expert = to_host::<u32>(&a.tile_expert);
            let position = to_host::<u32>(&a.slot_position);
            let sorted = to_host::<u32>(&a.sorted_slots);
            let mut want_sorted = vec![ids.len() as u32; total];
            for (slot, &s) in groups.token_slot.iter().enumerate() {
                let x = ids[slot] as usize;
                let row = padded[x] as usize + s as usize - groups.offsets[x];
                assert_eq!(position[slot] as usize, row, "slot {slot}");
                want_sorted[row] = slot as u32;
            }
            assert_eq!(&sorted[..total], &want_sorted[..]);
            for (tile_index, &x) in tile_expert[..num_tiles].iter().enumerate() {
                let row = (tile_index * tile) as u32;
                assert!(padded[x as usize] <= row && row < padded[x as usize + 1]);
            }
        }
    }
}

#[test]
fn combine_matches_a_loop() {
    let Some(dev) = gpu() else { return };
    for (tokens, k, hidden) in [(1, 1, 1), (5, 2, 7), (300, 8, 2048)] {
        let slots = tokens * k;
        let rows = slots + 3; // padding rows nobody points at
        let y = random(rows * hidden, 1.0, 5);
        let w = random(slots, 1.0, 6);
        // A permutation of rows as positions: every slot its own row.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut pos: Vec<u32> = (0..rows as u32).collect();
        for i in (1..rows).rev() {
            pos.swap(i, rng.random_range(0..=i));
        }
        pos.truncate(slots);
        for dtype in [DType::F32, DType::BF16] {
            // The loop over what the GPU holds: y rounded to its dtype.
            let yr = rounded(&y, dtype);
            let mut want = vec![0f32; tokens * hidden];
            for t in 0..tokens {
                for j in 0..k {
                    let (p, wt) = (pos[t * k + j] as usize, w[t * k + j]);
                    for h in 0..hidden {
                        want[t * hidden + h] += wt * yr[p * hidden + h];
                    }
                }
            }
            let yt = Tensor::from_vec(y.clone(), (rows, hidden), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let wt = Tensor::from_vec(w.clone(), (tokens, k), &dev).unwrap();
            let pt = Tensor::from_vec(pos.clone(), slots, &dev).unwrap();
            let out = combine(&yt, &wt, &pt).unwrap();
            assert_eq!(out.dtype(), dtype);
            let got = to_host::<f32>(&out.to_dtype(DType::F32).unwrap());
            // f32 sums in the same order; bf16 rounds each output once (2^-9 of it).
            let bound = if dtype == DType::BF16 { 4e-3 } else { 1e-6 };
            let err = relative_error(&got, &want);
            assert!(err <= bound, "{dtype:?} {tokens}x{k}x{hidden}: {err:e}");
        }
    }
}

#[test]
fn combine_steps_over_the_grid_limit_and_skips_dropped_slots() {
    let Some(dev) = gpu() else { return };
    // More tokens than a grid's y dimension holds; one slot dropped by the alignment.
    let tokens = 70_000;
    let y: Vec<f32> = (0..tokens).map(|r| r as f32).collect();
    let mut pos: Vec<u32> = (0..tokens as u32).rev().collect();
    pos[12_345] = u32::MAX;
    let want: Vec<f32> = pos
        .iter()
        .map(|&p| if p == u32::MAX { 0.0 } else { 2.0 * p as f32 })
        .collect();
    let yt = Tensor::from_vec(y, (tokens, 1), &dev).unwrap();
    let wt = Tensor::from_vec(vec![2f32; tokens], (tokens, 1), &dev).unwrap();
    let pt = Tensor::from_vec(pos, tokens, &dev).unwrap();
    let got = to_host::<f32>(&combine(&yt, &wt, &pt).unwrap());
    assert_eq!(got, want);
}

#[test]
fn expert_ids_out_of_range_land_nowhere_and_add_nothing() {
    let Some(dev) = gpu() else { return };
    // Four experts; token 0's second choice and token 2's first are out of range.
    let ids = Tensor::new(&[[0u32, 9], [1, 0], [4, 3]], &dev).unwrap();
    let a = align(&ids, 4, 1).unwrap();
    assert_eq!(to_host::<u32>(&a.counts), [2, 1, 0, 1]);
    let position = to_host::<u32>(&a.slot_position);
    assert_eq!(position[1], u32::MAX);
    assert_eq!(position[4], u32::MAX);
    let y = Tensor::new(&[[1f32], [10.0], [100.0], [1000.0]], &dev).unwrap();
    let w = Tensor::ones((3, 2), DType::F32, &dev).unwrap();
    let out = to_host::<f32>(&combine(&y, &w, &a.slot_position).unwrap());
    let row = |slot: usize| [1f32, 10.0, 100.0, 1000.0][position[slot] as usize];
    assert_eq!(out, [row(0), row(2) + row(3), row(5)]);
}

/// Random top-k choices (distinct experts per token) for `tokens` tokens.
fn random_choices(tokens: usize, e: usize, k: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids = Vec::with_capacity(tokens * k);
    for _ in 0..tokens {
        let mut row: Vec<u32> = (0..e as u32).collect();
        for j in 0..k {
            let pick = rng.random_range(j..e);
            row.swap(j, pick);
        }
        ids.extend_from_slice(&row[..k]);
    }
    ids
}

/// `v` rounded to `dtype` (f32, bf16 or f16) and back: what the GPU holds of it.
fn rounded(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// max |got - want| / max |want|: the error relative to the largest reference value.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    // NaN anywhere fails every bound.
    if got.iter().any(|g| g.is_nan()) {
        f32::INFINITY
    } else {
        diff / scale
    }
}

/// The bound of the expert-FFN comparisons, relative to the largest output: f32 sums in
/// another order; half precision also rounds each output (and, on the GEMM path, the
/// activation between the two products) once.
fn ffn_bound(dtype: DType) -> f32 {
    if dtype == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

/// A planted bug: the last 8 columns of every row of a (rows, len) matrix zeroed, as a kernel
/// that drops the last vector of K would compute.
fn drop_last_columns(m: &[f32], len: usize) -> Vec<f32> {
    let mut m = m.to_vec();
    for row in m.chunks_mut(len) {
        let keep = row.len().saturating_sub(8);
        row[keep..].fill(0.0);
    }
    m
}

/// One (tokens, E, k, H, I) case of the experts' FFN: random inputs, weights and choices.
struct FfnCase {
    tokens: usize,
    e: usize,
    k: usize,
    h: usize,
    i: usize,
    x: Vec<f32>,
    gate_up: Vec<f32>,
    down: Vec<f32>,
    ids: Vec<u32>,
    weights: Vec<f32>,
}

impl FfnCase {
    /// The CPU's grouped FFN on the case, its tensors as given (already rounded by the caller).
    fn cpu(&self, x: &[f32], gate_up: &[f32], down: &[f32]) -> Vec<f32> {
        use crate::ops::cpu::expert_ffn::{combine, expert_ffn_checked, ExpertRows, ExpertWeights};
        use crate::ops::cpu::Isa;
        use crate::quant::WeightSlice;
        let groups = HostDispatch::new(&self.ids, &self.weights, self.e, self.k);
        let mut out = vec![0f32; self.tokens * self.h];
        let [gate, up] = ExpertRows::joined(WeightSlice::F32(gate_up), self.i);
        let w = ExpertWeights {
            gate,
            up,
            down: WeightSlice::F32(down),
            gate_up_bias: None,
            down_bias: None,
            hidden: self.h,
            intermediate: self.i,
            activation: crate::spec::Activation::SiluGated,
        };
        let rows = expert_ffn_checked(Isa::selected(), x, &groups, &w).unwrap();
        combine(&rows, &groups, &mut out);
        out
    }

    /// The same on the GPU by `path` through align (to `tile` rows), the FFN and combine, in
    /// `dtype`.
    fn gpu(
        &self,
        dev: &Device,
        (path, tile): (FfnPath, usize),
        dtype: DType,
        (gate_up, down): (&[f32], &[f32]),
    ) -> Vec<f32> {
        let (tokens, e, k, h, i) = (self.tokens, self.e, self.k, self.h, self.i);
        let on_gpu = |v: &[f32], shape: &[usize]| {
            Tensor::from_vec(v.to_vec(), shape, dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let ids = Tensor::from_vec(self.ids.clone(), (tokens, k), dev).unwrap();
        let a = align(&ids, e, tile).unwrap();
        let y = expert_ffn(
            &on_gpu(&self.x, &[tokens, h]),
            &on_gpu(gate_up, &[e, 2 * i, h]),
            &on_gpu(down, &[e, h, i]),
            &a,
            k,
            path,
        )
        .unwrap();
        let wt = Tensor::from_vec(self.weights.clone(), (tokens, k), dev).unwrap();
        let out = combine(&y, &wt, &a.slot_position).unwrap();
        to_host::<f32>(&out.to_dtype(DType::F32).unwrap())
    }
}

/// Runs the experts' FFN by `path` through align and combine on the GPU, and by the CPU's
/// grouped FFN on the same values rounded to the GPU's dtype, for every (tokens, E, k, H, I)
/// case and dtype: within [`ffn_bound`] of the largest output. Each bound is shown to catch a
/// bug: the same comparison with the last 8 columns of K dropped (in gate_up, then in down)
/// must fail it, on the CPU (which runs without a GPU too) and on the GPU. `ids` picks each
/// case's choices.
fn check_expert_ffn(
    path: FfnPath,
    cases: &[(usize, usize, usize, usize, usize)],
    dtypes: &[DType],
    ids: impl Fn(usize, usize, usize, u64) -> Vec<u32>,
) {
    let dev = gpu();
    for (n, &(tokens, e, k, h, i)) in cases.iter().enumerate() {
        let seed = n as u64;
        let case = FfnCase {
            tokens,
            e,
            k,
            h,
            i,
            x: random(tokens * h, 1.0, 10 + seed),
            gate_up: random(e * 2 * i * h, 0.2, 20 + seed),
            down: random(e * h * i, 0.2, 30 + seed),
            ids: ids(tokens, e, k, seed),
            weights: random(tokens * k, 1.0, 40 + seed),
        };
        let planted = [
            (drop_last_columns(&case.gate_up, h), case.down.clone()),
            (case.gate_up.clone(), drop_last_columns(&case.down, i)),
        ];
        for &dtype in dtypes {
            let what = format!("{path:?} {dtype:?} case {n}");
            let (x, gate_up, down) = (
                rounded(&case.x, dtype),
                rounded(&case.gate_up, dtype),
                rounded(&case.down, dtype),
            );
            let want = case.cpu(&x, &gate_up, &down);
            let bound = ffn_bound(dtype);
            for (bug, (g, d)) in planted.iter().enumerate() {
                let (g, d) = (rounded(g, dtype), rounded(d, dtype));
                let cpu_err = relative_error(&case.cpu(&x, &g, &d), &want);
                // Twice the bound: the GPU's own error cannot hide the bug.
                assert!(
                    cpu_err > 2.0 * bound,
                    "{what}: bug {bug} moves the CPU's output by {cpu_err:e} only"
                );
                if let Some(dev) = &dev {
                    let run = (path, path.tile());
                    let gpu_err = relative_error(&case.gpu(dev, run, dtype, (&g, &d)), &want);
                    assert!(gpu_err > bound, "{what}: bug {bug} unseen on the GPU");
                }
            }
            let Some(dev) = &dev else { continue };
            // The decode kernel reads any alignment: its own (1) and a padded one.
            let tiles: &[usize] = match path {
                FfnPath::Decode => &[1, 16],
                FfnPath::Gemm => &[GEMM_TILE],
            };
            for &tile in tiles {
                let got = case.gpu(dev, (path, tile), dtype, (&gate_up, &down));
                let err = relative_error(&got, &want);
                assert!(
                    err <= bound,
                    "{what} tile {tile}: error {err:e} > {bound:e}"
                );
                eprintln!("{what} tile {tile}: error {err:.1e} (bound {bound:.0e})");
            }
        }
    }
}

#[test]
fn decode_expert_ffn_matches_the_cpu_grouped_ffn() {
    // (tokens, E, k, H, I): one token; a few sharing experts (counts past the kernel's 4
    // tokens at a time); sizes off the warp grid and off the 8-element vectors; vector loads
    // over Qwen3-30B-A3B's expert width (16 of its 128 experts: 200 MB of f32 weights).
    check_expert_ffn(
        FfnPath::Decode,
        &[
            (1, 8, 2, 64, 96),
            (6, 4, 2, 33, 40),
            (12, 16, 4, 128, 72),
            (3, 16, 8, 2048, 768),
        ],
        &[DType::F32, DType::BF16, DType::F16],
        random_choices,
    );
}

#[test]
fn grouped_gemm_expert_ffn_matches_the_cpu_grouped_ffn() {
    // Tiles partly padding, several tiles per expert, columns off the 64-column block
    // (I = 200, H = 72), 4096 tokens, every token on one expert.
    let cases = [
        (5, 8, 2, 64, 96),
        (300, 8, 2, 256, 200),
        (40, 4, 1, 72, 64),
        (4096, 16, 4, 128, 64),
    ];
    check_expert_ffn(
        FfnPath::Gemm,
        &cases,
        &[DType::BF16, DType::F16],
        random_choices,
    );
    // Every token's choices on the same k experts, spread apart.
    check_expert_ffn(
        FfnPath::Gemm,
        &[(200, 8, 2, 64, 64)],
        &[DType::BF16],
        |tokens, _, k, _| (0..tokens * k).map(|s| (s % k) as u32 * 3).collect(),
    );
}

#[test]
fn the_gemm_refuses_what_it_cannot_take() {
    let Some(dev) = gpu() else { return };
    let ids = Tensor::from_vec(vec![0u32, 1], (1, 2), &dev).unwrap();
    let x = Tensor::zeros((1, 33), DType::BF16, &dev).unwrap();
    let gate_up = Tensor::zeros((2, 16, 33), DType::BF16, &dev).unwrap();
    let down = Tensor::zeros((2, 33, 8), DType::BF16, &dev).unwrap();
    let a = align(&ids, 2, GEMM_TILE).unwrap();
    let err = expert_ffn(&x, &gate_up, &down, &a, 2, FfnPath::Gemm).unwrap_err();
    assert!(err.to_string().contains("multiples of 8"), "{err}");
    let a = align(&ids, 2, 16).unwrap();
    let x = Tensor::zeros((1, 32), DType::BF16, &dev).unwrap();
    let gate_up = Tensor::zeros((2, 16, 32), DType::BF16, &dev).unwrap();
    let down = Tensor::zeros((2, 32, 8), DType::BF16, &dev).unwrap();
    let err = expert_ffn(&x, &gate_up, &down, &a, 2, FfnPath::Gemm).unwrap_err();
    assert!(err.to_string().contains("tiles of 64"), "{err}");
    // f32 takes the decode path, chosen without error.
    let x32 = x.to_dtype(DType::F32).unwrap();
    let path = FfnPath::choose(1 << 20, &x32, &gate_up, &down).unwrap();
    assert_eq!(path, FfnPath::Decode);
}
