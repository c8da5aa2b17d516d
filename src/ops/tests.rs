//! The op table: each op's edge-named cases, run on every backend present (the CPU at every
//! instruction set it has, CUDA when built and a GPU opens) against the reference backend on
//! the CPU. A new op adds its rows here; a new backend joins through `Backend::present`.

use candle_core::{DType, Device, Tensor};

use super::reference::HostRouting;
use super::{AttentionShape, Backend, Experts, Routing};
use crate::quant::{QuantFormat, Weight};
use crate::spec::{Activation, GroupLimit, RouterSpec, Scoring, Selection};

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// The largest difference between `got` and `want` over the largest magnitude of `want`,
/// computed on the host so that a NaN anywhere fails (candle's max skips one that is not
/// first, and the CUDA outputs are NaN-poisoned under test to show unwritten elements); an
/// all-zero `want` gives NaN too, which fails every bound (such a case would prove nothing).
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let host = |t: &Tensor| -> Vec<f32> {
        let t = t
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    };
    let (got, want) = (host(got), host(want));
    if got.iter().chain(&want).any(|x| x.is_nan()) {
        return f32::NAN;
    }
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    diff / want.iter().map(|b| b.abs()).fold(0f32, f32::max)
}

/// f32 backends differ in summation order only; in half precision the reference multiplies in
/// that precision while the kernels widen to f32 (or round activations to bf16 for bf16 dots).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 5e-3,
        _ => 3e-2,
    }
}

/// Deterministic values in about [-1, 1]: a table must not pass by luck.
fn values(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|j| ((j * 7919 + seed * 104_729) % 401) as f32 / 200.0 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn on(t: &Tensor, dtype: DType, device: &Device) -> Tensor {
    t.to_dtype(dtype).unwrap().to_device(device).unwrap()
}

// ---- linear -------------------------------------------------------------------------------

#[test]
fn linear() {
    // (rows, out, in): one row, sizes off the SIMD grids, a prefill-sized block.
    let shapes = [(1, 40, 96), (3, 17, 33), (9, 64, 128), (300, 24, 64)];
    for (be, dev) in Backend::present() {
        for dtype in DTYPES {
            for &(m, n, k) in &shapes {
                let (x, w, b) = (values(&[m, k], 1), values(&[n, k], 2), values(&[n], 3));
                let w = (w / (k as f64).sqrt()).unwrap();
                let want = Backend::Reference
                    .linear(&x, &Weight::Dense(w.clone()), Some(&b))
                    .unwrap();
                let weight = Weight::Dense(on(&w, dtype, &dev));
                let got = be
                    .linear(&on(&x, dtype, &dev), &weight, Some(&on(&b, dtype, &dev)))
                    .unwrap();
                let err = relative_error(&got, &want);
                let name = be.name();
                assert!(
                    err <= tolerance(dtype),
                    "{name} {dtype:?} {m}x{n}x{k}: {err:e}"
                );
            }
        }
    }
}

#[test]
fn linear_over_quantized_weights() {
    // The kernels read the blocks in place; the reference dequantizes them.
    for format in QuantFormat::ALL {
        // Rows of whole blocks: 32 weights, or the K-quants' 256.
        let blocks = format.block_values() / 32;
        for (m, n, k) in [(1, 40, 64 * blocks), (7, 33, 96 * blocks)] {
            let (x, w) = (values(&[m, k], 4), values(&[n, k], 5));
            let w = Weight::new(w, Some(format), "w").unwrap();
            let want = Backend::Reference.linear(&x, &w, None).unwrap();
            // Only the CPU reads quantized weights; its kernels quantize the activations too.
            for isa in super::cpu::Isa::available() {
                let got = Backend::Cpu(isa).linear(&x, &w, None).unwrap();
                let err = relative_error(&got, &want);
                assert!(err <= 2e-2, "{isa:?} {format:?} {m}x{n}x{k}: {err:e}");
            }
        }
    }
}

// ---- attention ----------------------------------------------------------------------------

#[test]
fn attention() {
    // (heads, kv heads, head_dim, value width, new tokens, cached, window): decode, prefill
    // from empty, a chunk after a cache, head dims off the 16-lane grid, windows shorter than
    // the context, of one key, and longer than it; values narrower and wider than the keys;
    // each without sinks and with them.
    let cases = [
        (4, 2, 16, 16, 1, 9, None),
        (4, 4, 8, 8, 5, 0, None),
        (6, 2, 20, 20, 3, 4, None),
        (16, 4, 64, 64, 40, 200, None),
        (4, 2, 16, 16, 1, 9, Some(4)),
        (4, 4, 8, 8, 7, 3, Some(3)),
        (6, 2, 20, 20, 3, 4, Some(1)),
        (4, 2, 16, 16, 5, 2, Some(100)),
        (6, 2, 20, 12, 3, 4, None),
        (4, 1, 8, 24, 5, 6, None),
    ];
    for (be, dev) in Backend::present() {
        for (&(nh, nkv, hd, dv, t, cached, window), with_sinks) in
            cases.iter().flat_map(|c| [(c, false), (c, true)])
        {
            let s = cached + t;
            let (q, k, v) = (
                values(&[nh, t, hd], 6),
                values(&[nkv, s, hd], 7),
                values(&[nkv, s, dv], 8),
            );
            // Sinks from well below the scores to well above them.
            let sinks = with_sinks.then(|| (0..nh).map(|h| h as f32 * 1.5 - 4.0).collect());
            let shape = AttentionShape {
                kv_heads: nkv,
                scale: 1.0 / (hd as f64).sqrt(),
                window,
                sinks,
            };
            let want = Backend::Reference.attention(&q, &k, &v, &shape).unwrap();
            let f32_on = |x: &Tensor| on(x, DType::F32, &dev);
            let got = be
                .attention(&f32_on(&q), &f32_on(&k), &f32_on(&v), &shape)
                .unwrap();
            let err = relative_error(&got, &want);
            let name = be.name();
            assert!(
                err <= 1e-5,
                "{name} heads {nh}/{nkv}x{hd}->{dv}, {t} after {cached}, window {window:?}, \
                 sinks {with_sinks}: {err:e}"
            );
        }
    }
}

/// Latent attention's absorbed form: one kv head for every query head, the values the first
/// columns of the keys (a narrowing of a cache buffer wider than the valid positions); decode
/// and a chunk.
#[test]
fn attention_with_values_inside_the_keys() {
    let (nh, width, dv, capacity) = (20, 40, 32, 400);
    for (be, dev) in Backend::present() {
        for (t, cached) in [(1, 300), (9, 300), (6, 0)] {
            let s = cached + t;
            let buffer = on(&values(&[1, capacity, width], 31), DType::F32, &dev);
            let k = buffer.narrow(1, 0, s).unwrap();
            let v = k.narrow(2, 0, dv).unwrap();
            let q = on(&values(&[nh, t, width], 32), DType::F32, &dev);
            let shape = AttentionShape {
                kv_heads: 1,
                scale: 0.2,
                window: None,
                sinks: None,
            };
            let v_copy = v.contiguous().unwrap();
            let want = Backend::Reference
                .attention(&q, &k.contiguous().unwrap(), &v_copy, &shape)
                .unwrap();
            let got = be.attention(&q, &k, &v, &shape).unwrap();
            assert_eq!(got.dims(), &[t, nh * dv]);
            let err = relative_error(&got, &want);
            assert!(err <= 1e-5, "{} {t} after {cached}: {err:e}", be.name());
        }
    }
}

// ---- gated delta rule ---------------------------------------------------------------------

#[test]
fn gated_delta() {
    // (new tokens, key heads, value heads, dk, dv): decode, a prompt below one chunk, one
    // across two chunks (not a multiple of 64), value heads sharing key heads; each run twice
    // from the state the first run left, as a sequence goes on.
    let cases = [
        (1, 1, 1, 8, 8),
        (5, 2, 4, 12, 8),
        (70, 2, 4, 16, 12),
        (1, 2, 6, 20, 16),
    ];
    for (be, dev) in Backend::present() {
        for &(t, nk, nv, dk, dv) in &cases {
            let (q, k, v) = (
                values(&[t, nk, dk], 11),
                values(&[t, nk, dk], 12),
                values(&[t, nv, dv], 13),
            );
            // Log decays in [-1.5, -0.5]; write strengths in [0.25, 0.75].
            let g = values(&[t, nv], 14).affine(0.5, -1.0).unwrap();
            let beta = values(&[t, nv], 15).affine(0.25, 0.5).unwrap();
            let mut want_state = (values(&[nv, dk, dv], 16) * 0.5).unwrap();
            let f32_on = |x: &Tensor| on(x, DType::F32, &dev);
            let mut state = f32_on(&want_state);
            for run in 0..2 {
                let want = Backend::Reference
                    .gated_delta((&q, &k, &v), (&g, &beta), &mut want_state)
                    .unwrap();
                let got = be
                    .gated_delta(
                        (&f32_on(&q), &f32_on(&k), &f32_on(&v)),
                        (&f32_on(&g), &f32_on(&beta)),
                        &mut state,
                    )
                    .unwrap();
                let name = be.name();
                let (out_err, state_err) = (
                    relative_error(&got, &want),
                    relative_error(&state, &want_state),
                );
                assert!(
                    out_err <= 1e-5 && state_err <= 1e-5,
                    "{name} {t} tokens, heads {nk}/{nv} of {dk}/{dv}, run {run}: output \
                     {out_err:e}, state {state_err:e}"
                );
            }
        }
    }
}

// ---- route --------------------------------------------------------------------------------

/// Every router the families use, by name.
fn routers() -> Vec<(&'static str, RouterSpec)> {
    let softmax = RouterSpec::softmax_top_k(3, false);
    vec![
        ("softmax top-k (Qwen, OLMoE)", softmax),
        (
            "renormalised (Mixtral)",
            RouterSpec {
                renormalise: true,
                ..softmax
            },
        ),
        (
            "top-k then softmax (gpt-oss, Granite)",
            RouterSpec {
                selection: Selection::TopKThenScore,
                ..softmax
            },
        ),
        (
            "sigmoid, scaled",
            RouterSpec {
                scoring: Scoring::Sigmoid,
                renormalise: true,
                scale: 2.5,
                ..softmax
            },
        ),
        (
            "sigmoid of the k best logits",
            RouterSpec {
                scoring: Scoring::Sigmoid,
                selection: Selection::TopKThenScore,
                ..softmax
            },
        ),
        (
            "grouped sigmoid with a selection bias (DeepSeek-V3)",
            RouterSpec {
                scoring: Scoring::Sigmoid,
                correction_bias: true,
                group_limit: Some(GroupLimit { groups: 4, keep: 2 }),
                renormalise: true,
                scale: 2.5,
                ..softmax
            },
        ),
    ]
}

/// Each backend's routing against the host router. On the CPU backend, which routes with the
/// host router itself, this checks the plumbing (logits and the selection bias off the
/// device, the result back); the router's meaning is pinned by hand-computed cases in
/// reference/route.rs.
#[test]
fn route() {
    const E: usize = 8;
    // Random logits for one token and for 4096; a row of ties (the lower index wins).
    let logit_cases = [
        ("one token", values(&[1, E], 9)),
        ("4096 tokens", (values(&[4096, E], 10) * 3.0).unwrap()),
        (
            "ties",
            Tensor::zeros((3, E), DType::F32, &Device::Cpu).unwrap(),
        ),
    ];
    let correction = (values(&[E], 11) * 0.5).unwrap();
    for (be, dev) in Backend::present() {
        for (case, logits) in &logit_cases {
            for (router, spec) in routers() {
                let c = spec.correction_bias.then_some(&correction);
                let host: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
                let bias: Option<Vec<f32>> = c.map(|c| c.to_vec1().unwrap());
                let want = HostRouting::route(&host, E, &spec, bias.as_deref()).unwrap();
                let c_dev = c.map(|c| on(c, DType::F32, &dev));
                let got = be
                    .route(&on(logits, DType::F32, &dev), &spec, c_dev.as_ref())
                    .unwrap()
                    .to_host(E)
                    .unwrap();
                let name = be.name();
                assert_eq!(got.experts, want.experts, "{name}, {router}, {case}");
                let close = got
                    .weights
                    .iter()
                    .zip(&want.weights)
                    .all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs()));
                assert!(close, "{name}, {router}, {case}: weights differ");
            }
        }
    }
}

// ---- the routed experts: dispatch -> expert FFN -> combine --------------------------------

const HIDDEN: usize = 40;
const INTER: usize = 24;
const EXPERTS: usize = 6;

fn experts(dtype: DType, device: &Device, bias: bool) -> Experts {
    let scale = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    let gate_up = (values(&[EXPERTS, 2 * INTER, HIDDEN], 12) * scale(HIDDEN)).unwrap();
    let down = (values(&[EXPERTS, HIDDEN, INTER], 13) * scale(INTER)).unwrap();
    let mut e = Experts::new(
        Weight::Dense(on(&gate_up, dtype, device)),
        Weight::Dense(on(&down, dtype, device)),
    );
    if bias {
        e.gate_up_bias = Some(on(
            &(values(&[EXPERTS, 2 * INTER], 14) * 0.3).unwrap(),
            DType::F32,
            device,
        ));
        e.down_bias = Some(on(
            &(values(&[EXPERTS, HIDDEN], 15) * 0.3).unwrap(),
            DType::F32,
            device,
        ));
    }
    e
}

/// A routing given explicitly: `choices[t]` is token t's (expert, weight) list.
fn by_hand(choices: &[Vec<(u32, f32)>]) -> HostRouting {
    HostRouting {
        num_experts: EXPERTS,
        top_k: choices[0].len(),
        experts: choices.iter().flatten().map(|c| c.0).collect(),
        weights: choices.iter().flatten().map(|c| c.1).collect(),
    }
}

/// The named routings: (case, tokens, routing).
fn routings() -> Vec<(&'static str, usize, HostRouting)> {
    let router = |tokens: usize, spec: RouterSpec| {
        let logits: Vec<f32> = values(&[tokens, EXPERTS], 16)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        HostRouting::route(&logits, EXPERTS, &spec, None).unwrap()
    };
    let one_expert: Vec<_> = (0..37)
        .map(|t| vec![(3, 0.25 + t as f32 / 100.0)])
        .collect();
    // Experts 0, 2 and 5 get nothing, including the first and the last.
    let idle: Vec<_> = (0..9)
        .map(|t| vec![(1 + 2 * (t % 2) as u32, 0.7), (4 - 3 * (t % 2) as u32, 0.3)])
        .collect();
    // Expert 0 takes every token (the matrix kernels), 1-5 one or two each (the dot products).
    let few_and_many: Vec<_> = (0..7)
        .map(|t| vec![(0, 0.6), (1 + (t % 5) as u32, 0.4)])
        .collect();
    let ties = HostRouting::route(
        &[0.0; 5 * EXPERTS],
        EXPERTS,
        &RouterSpec::softmax_top_k(3, false),
        None,
    )
    .unwrap();
    vec![
        (
            "one token",
            1,
            by_hand(&[vec![(5, 0.5), (0, 0.3), (2, 0.2)]]),
        ),
        ("every token on one expert", 37, by_hand(&one_expert)),
        ("empty experts", 9, by_hand(&idle)),
        ("few and many tokens per expert", 7, by_hand(&few_and_many)),
        ("tied router scores", 5, ties),
        (
            "zero weights",
            2,
            by_hand(&[vec![(2, 1.0), (3, 0.0)], vec![(3, 0.0), (2, 1.0)]]),
        ),
        (
            "4096 tokens routed",
            4096,
            router(4096, RouterSpec::softmax_top_k(2, true)),
        ),
    ]
}

fn run_experts(
    be: &Backend,
    xs: &Tensor,
    experts: &Experts,
    routing: &HostRouting,
    act: Activation,
) -> Tensor {
    let tokens = xs.dims2().unwrap().0;
    let routing = Routing::from_host(routing.clone(), tokens).unwrap();
    let d = be.dispatch(&routing, xs, experts).unwrap();
    let rows = be.expert_ffn(xs, experts, &d, act).unwrap();
    be.combine(&rows, &d, xs).unwrap()
}

#[test]
fn routed_experts() {
    let clamped = Activation::SwigluClamped {
        alpha: 1.702,
        limit: 0.2,
    };
    // (activation, biases): every family's experts, then gpt-oss's and Gemma's forms.
    let kinds = [
        (Activation::SiluGated, false),
        (clamped, true),
        (Activation::GeluTanhGated, false),
    ];
    let present = Backend::present();
    for (case, tokens, routing) in routings() {
        let x = values(&[tokens, HIDDEN], 17);
        for (act, bias) in kinds {
            let want_f32 = run_experts(
                &Backend::Reference,
                &x,
                &experts(DType::F32, &Device::Cpu, bias),
                &routing,
                act,
            );
            for (be, dev) in &present {
                // A backend without kernels for these experts runs them on the reference.
                let sample = experts(DType::F32, dev, bias);
                let be = be.for_experts(&sample, act);
                for dtype in DTYPES {
                    let e = experts(dtype, dev, bias);
                    let got = run_experts(&be, &on(&x, dtype, dev), &e, &routing, act);
                    let err = relative_error(&got, &want_f32);
                    let name = be.name();
                    assert!(
                        err <= tolerance(dtype),
                        "{name} {dtype:?}, {case}, {act:?}, bias {bias}: {err:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn quantized_experts() {
    // The CPU kernels read expert blocks in place; the reference dequantizes. Down in a
    // format of its own as well, as Q4_K_M files mix Q4_K and Q6_K.
    for (format, down_format) in QuantFormat::ALL.into_iter().map(|f| (f, f)).chain([
        (QuantFormat::Q4K, QuantFormat::Q6K),
        (QuantFormat::Q4_0, QuantFormat::Q8_0),
    ]) {
        // Rows of whole blocks: 32 weights, or the K-quants' 256.
        let (h, i) = if format.block_values() > 32 || down_format.block_values() > 32 {
            (256, 256)
        } else {
            (64, 32)
        };
        let (gate_up, down) = expert_stacks(h, i);
        let e = Experts::new(
            Weight::new(gate_up, Some(format), "gate_up").unwrap(),
            Weight::new(down, Some(down_format), "down").unwrap(),
        );
        for (isa, err) in cpu_experts_against_reference(&e, h) {
            assert!(err <= 3e-2, "{isa:?} {format:?}/{down_format:?}: {err:e}");
        }
    }
}

/// Stacks of EXPERTS experts of hidden size h and ffn size i: (gate_up [E, 2i, h], down [E, h, i]).
fn expert_stacks(h: usize, i: usize) -> (Tensor, Tensor) {
    let gate_up = (values(&[EXPERTS, 2 * i, h], 18) * 0.125).unwrap();
    let down = (values(&[EXPERTS, h, i], 19) * 0.17).unwrap();
    (gate_up, down)
}

/// Two tokens through `e` (hidden size h) on the CPU at every instruction set it has: each
/// set's relative error against the reference backend.
fn cpu_experts_against_reference(e: &Experts, h: usize) -> Vec<(super::cpu::Isa, f32)> {
    let routing = by_hand(&[vec![(1, 0.6), (4, 0.4)], vec![(1, 0.5), (0, 0.5)]]);
    let x = values(&[2, h], 20);
    let act = Activation::SiluGated;
    let want = run_experts(&Backend::Reference, &x, e, &routing, act);
    super::cpu::Isa::available()
        .into_iter()
        .map(|isa| {
            let got = run_experts(&Backend::Cpu(isa), &x, e, &routing, act);
            (isa, relative_error(&got, &want))
        })
        .collect()
}

#[test]
fn bf16_experts_in_panels_or_rows() {
    // bf16 stacks go into panels of 16 rows where the CPU reads them so (AVX-512, no AMX) and
    // each matrix has a multiple of 32 rows: both stacks (64, 32), only down (64, 40: gate/up
    // has 80 rows, whose halves would split a panel), neither (40, 24).
    for (h, i) in [(64, 32), (64, 40), (40, 24)] {
        let (gate_up, down) = expert_stacks(h, i);
        let bf16 = |t: Tensor| Weight::new(t.to_dtype(DType::BF16).unwrap(), None, "w").unwrap();
        let e = Experts::new(bf16(gate_up), bf16(down));
        let in_panels = |w: &Weight| matches!(w, Weight::Panels(_));
        let packs = crate::quant::packs_panels(&[1, 32, 2]);
        assert_eq!(in_panels(&e.gate_up), packs && i == 32);
        assert_eq!(in_panels(&e.down), packs && h == 64);
        for (isa, err) in cpu_experts_against_reference(&e, h) {
            assert!(err <= tolerance(DType::BF16), "{isa:?} ({h}, {i}): {err:e}");
        }
    }
}

#[test]
fn a_routing_that_names_a_missing_expert_is_an_error() {
    let x = values(&[1, HIDDEN], 21);
    // A routing over one expert more than the layer has: consistent in itself, so only the
    // dispatch, which knows the experts, can refuse it (before any kernel indexes by it).
    let bad = HostRouting {
        num_experts: EXPERTS + 1,
        ..by_hand(&[vec![(EXPERTS as u32, 1.0)]])
    };
    for (be, dev) in Backend::present() {
        let routing = Routing::from_host(bad.clone(), 1).unwrap();
        let e = experts(DType::F32, &dev, false);
        let dispatched = be.dispatch(&routing, &on(&x, DType::F32, &dev), &e);
        assert!(dispatched.is_err(), "{}", be.name());
    }
}

#[test]
fn misshapen_inputs_are_errors_on_every_backend() {
    let f32_on = |t: &Tensor, dev: &Device| on(t, DType::F32, dev);
    for (be, dev) in Backend::present() {
        let name = be.name();
        // Attention: no kv heads, heads not a multiple of them, fewer keys than queries, a
        // window of no keys.
        let q = f32_on(&values(&[4, 3, 8], 24), &dev);
        let k = f32_on(&values(&[2, 5, 8], 25), &dev);
        let short = f32_on(&values(&[2, 2, 8], 26), &dev);
        let three = f32_on(&values(&[3, 5, 8], 27), &dev);
        let shape = |kv_heads, window| AttentionShape {
            kv_heads,
            scale: 0.3,
            window,
            sinks: None,
        };
        let wrong_sinks = AttentionShape {
            sinks: Some(vec![0.0; 3]),
            ..shape(2, None)
        };
        for (keys, s) in [
            (&k, shape(0, None)),
            (&three, shape(3, None)),
            (&short, shape(2, None)),
            (&k, shape(2, Some(0))),
            (&k, wrong_sinks),
        ] {
            let out = be.attention(&q, keys, keys, &s);
            assert!(out.is_err(), "{name} attention {s:?}");
        }
        // A linear layer given rows of the wrong width.
        let w = Weight::Dense(f32_on(&values(&[6, 8], 28), &dev));
        let x = f32_on(&values(&[2, 7], 29), &dev);
        assert!(be.linear(&x, &w, None).is_err(), "{name} linear");
        // Rows of the wrong width for the experts; a bias of the wrong shape.
        let mut e = experts(DType::F32, &dev, true);
        let routing = || Routing::from_host(by_hand(&[vec![(1, 1.0)]]), 1).unwrap();
        let x = f32_on(&values(&[1, HIDDEN + 1], 30), &dev);
        let d = be.dispatch(&routing(), &x, &e);
        let rows = d.and_then(|d| be.expert_ffn(&x, &e, &d, Activation::SiluGated));
        assert!(
            rows.is_err(),
            "{name} experts given rows of the wrong width"
        );
        e.down_bias = Some(f32_on(&values(&[EXPERTS, HIDDEN + 1], 31), &dev));
        let x = f32_on(&values(&[1, HIDDEN], 32), &dev);
        assert!(
            be.dispatch(&routing(), &x, &e).is_err(),
            "{name} bias shape"
        );
    }
}

#[test]
fn gated_activations_match_their_scalar_definition() {
    let (g, u) = (
        (values(&[5, 33], 22) * 9.0).unwrap(),
        (values(&[5, 33], 23) * 9.0).unwrap(),
    );
    let (gs, us): (Vec<f32>, Vec<f32>) = (
        g.flatten_all().unwrap().to_vec1().unwrap(),
        u.flatten_all().unwrap().to_vec1().unwrap(),
    );
    let acts = [
        Activation::SiluGated,
        Activation::GeluTanhGated,
        Activation::SwigluClamped {
            alpha: 1.702,
            limit: 7.0,
        },
    ];
    for (be, dev) in Backend::present() {
        for act in acts {
            let got = be
                .gated(&on(&g, DType::F32, &dev), &on(&u, DType::F32, &dev), act)
                .unwrap();
            let want: Vec<f32> = gs.iter().zip(&us).map(|(&g, &u)| act.apply(g, u)).collect();
            let want = Tensor::from_vec(want, (5, 33), &Device::Cpu).unwrap();
            let err = relative_error(&got, &want);
            assert!(err <= 1e-5, "{} {act:?}: {err:e}", be.name());
        }
    }
}
