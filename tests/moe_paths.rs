//! The fast MoE path against its slow twin (moe/reference.rs), on the routing edge cases:
//! all tokens on one expert, experts with no tokens, one token, 512 tokens, tied router scores,
//! for every weight dtype.

mod common;

use candle_core::{DType, Device, Tensor};
use common::relative_error;
use moe_runtime::moe::{Experts, MoeImpl, RouterConfig, Routing};
use moe_runtime::quant::Weight;

const HIDDEN: usize = 40;
const INTER: usize = 24;
const EXPERTS: usize = 6;

fn experts(dtype: DType) -> Experts {
    let dev = Device::Cpu;
    let scale = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    let gate_up = (Tensor::randn(0f32, 1.0, (EXPERTS, 2 * INTER, HIDDEN), &dev).unwrap()
        * scale(HIDDEN))
    .unwrap();
    let down =
        (Tensor::randn(0f32, 1.0, (EXPERTS, HIDDEN, INTER), &dev).unwrap() * scale(INTER)).unwrap();
    Experts {
        gate_up: Weight::Dense(gate_up.to_dtype(dtype).unwrap()),
        down: Weight::Dense(down.to_dtype(dtype).unwrap()),
    }
}

fn tokens(n: usize, dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, (n, HIDDEN), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A routing given explicitly: `choices[t]` is token t's (expert, weight) list.
fn routing(choices: &[Vec<(u32, f32)>]) -> Routing {
    Routing {
        num_experts: EXPERTS,
        top_k: choices[0].len(),
        experts: choices.iter().flatten().map(|c| c.0).collect(),
        weights: choices.iter().flatten().map(|c| c.1).collect(),
    }
}

/// Runs both paths; asserts they agree within `tol` of the output's largest magnitude (an
/// all-zero reference gives NaN, which fails too: such a test would prove nothing).
fn assert_paths_agree(xs: &Tensor, experts: &Experts, routing: &Routing, tol: f32) {
    let run = |imp| {
        experts
            .forward(xs, routing, imp)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let err = relative_error(&run(MoeImpl::Fast), &run(MoeImpl::Reference));
    assert!(
        err <= tol,
        "fast and reference differ by {err:e} of the largest output"
    );
}

/// f32 paths differ only in summation order; half-precision weights are widened to f32 by the
/// fast path but multiplied in half precision by the reference, which rounds every product.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 5e-3,
        _ => 3e-2,
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

#[test]
fn all_tokens_on_one_expert() {
    for dtype in DTYPES {
        let choices: Vec<_> = (0..37)
            .map(|t| vec![(3, 0.25 + t as f32 / 100.0)])
            .collect();
        assert_paths_agree(
            &tokens(37, dtype),
            &experts(dtype),
            &routing(&choices),
            tolerance(dtype),
        );
    }
}

#[test]
fn experts_with_no_tokens() {
    for dtype in DTYPES {
        // Experts 0, 2 and 5 get nothing, including the first and the last.
        let choices: Vec<_> = (0..9)
            .map(|t| vec![(1 + 2 * (t % 2) as u32, 0.7), (4 - 3 * (t % 2) as u32, 0.3)])
            .collect();
        assert_paths_agree(
            &tokens(9, dtype),
            &experts(dtype),
            &routing(&choices),
            tolerance(dtype),
        );
    }
}

#[test]
fn one_token() {
    for dtype in DTYPES {
        let choices = vec![vec![(5, 0.5), (0, 0.3), (2, 0.2)]];
        assert_paths_agree(
            &tokens(1, dtype),
            &experts(dtype),
            &routing(&choices),
            tolerance(dtype),
        );
    }
}

#[test]
fn five_hundred_twelve_tokens_routed_by_the_router() {
    for dtype in DTYPES {
        let xs = tokens(512, dtype);
        let logits = Tensor::randn(0f32, 2.0, (512, EXPERTS), &Device::Cpu).unwrap();
        let cfg = RouterConfig {
            top_k: 2,
            norm_topk_prob: true,
        };
        let r = Routing::from_logits(&logits, cfg).unwrap();
        assert_paths_agree(&xs, &experts(dtype), &r, tolerance(dtype));
    }
}

#[test]
fn tied_router_scores() {
    // Every expert scores the same: the lowest indices win, with equal weights.
    let logits = Tensor::zeros((5, EXPERTS), DType::F32, &Device::Cpu).unwrap();
    let cfg = RouterConfig {
        top_k: 3,
        norm_topk_prob: false,
    };
    let r = Routing::from_logits(&logits, cfg).unwrap();
    assert_eq!(r.experts, [0, 1, 2].repeat(5));
    assert!(r
        .weights
        .iter()
        .all(|&w| (w - 1.0 / EXPERTS as f32).abs() < 1e-7));
    for dtype in DTYPES {
        assert_paths_agree(&tokens(5, dtype), &experts(dtype), &r, tolerance(dtype));
    }
}

#[test]
fn zero_routing_weights_contribute_nothing() {
    // Zero weights must contribute nothing on either path.
    let choices = vec![vec![(2, 1.0), (3, 0.0)], vec![(3, 0.0), (2, 1.0)]];
    assert_paths_agree(
        &tokens(2, DType::F32),
        &experts(DType::F32),
        &routing(&choices),
        1e-5,
    );
}

#[test]
fn experts_with_few_and_many_tokens_in_one_call() {
    // Expert 0 takes every token (the matrix kernel), experts 1-5 one or two each (the dot
    // products), so both kernels run side by side in one call.
    for dtype in DTYPES {
        let choices: Vec<_> = (0..7)
            .map(|t| vec![(0, 0.6), (1 + (t % 5) as u32, 0.4)])
            .collect();
        assert_paths_agree(
            &tokens(7, dtype),
            &experts(dtype),
            &routing(&choices),
            tolerance(dtype),
        );
    }
}
