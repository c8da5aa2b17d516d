//! Golden tests against HF transformers: logits and greedy continuations of every fixture,
//! in f32 (tight) and bf16 / f16 (documented looser bound), with both MoE implementations.

mod common;

use candle_core::DType;
use common::{load, position_errors, reference, relative_error, FIXTURES};
use moe_runtime::{generate, Kernels, LoadOptions, Model};

/// f32 logits must agree with HF to 1e-4 of the largest reference logit.
const F32_BOUND: f32 = 1e-4;
/// bf16 keeps 8 bits of mantissa, so each rounding costs up to 2^-9; through a few layers of
/// random weights the fixtures' logits move by 1-3% of the largest logit. f16 has 3 more bits.
/// A router near a tie may also pick another expert in half precision, which moves that
/// position's logits far more (HF's own bf16 run of qwen2_moe-b is off by 64% at one position),
/// so the half-precision bounds hold at every position but one in 32 (at least one: the
/// chance of a near-tie grows with the prompt).
const BF16_BOUND: f32 = 0.06;
const F16_BOUND: f32 = 0.01;
/// qwen3_5_moe-a (70 positions, four routers of 5 experts choosing 2) flips experts in half
/// precision, and its linear layers carry each flip on through their recurrent state: HF's own
/// runs (transformers 5.23, against the f32 reference on the same weights) are off by 0.105 in
/// bf16 and 0.0855 in f16 at the third-worst position (the statistic checked here); ours by
/// 0.056 and 0.061. The two Qwen3-Next fixtures keep the usual bounds.
const QWEN3_5_HALF_BOUND: f32 = 0.08;
/// gemma4-a (13 positions, five routers of 6 experts choosing 2 behind sharpened router scales,
/// a soft cap at 5, layer scalars up to 1.46 that compound over the layers) flips experts in
/// bf16: HF's own bf16 run (transformers 5.24, against the f32 reference on the same weights)
/// is off by 0.170 at the second-worst position (the statistic checked here), ours by 0.185;
/// in f16 HF's by 0.024, ours by 0.033 (the worst: HF 0.111, ours 0.097).
const GEMMA4_A_HALF_BOUNDS: (f32, f32) = (0.25, 0.05);
/// The same carrying-on makes the Qwen3-Next fixtures' half-precision errors depend on the
/// machine: which near-tie flips follows the summation order of the matrix kernels, which
/// follows the CPU's kernels and cache sizes. qwen3_next-c in bf16 was within 0.018 on an Intel
/// Xeon, but on an AMD EPYC (Zen 4) a flip at one position left three positions off by 0.15 to
/// 0.30 and the rest within 0.05; with the portable kernels there, qwen3_next-a's third-worst
/// position was off by 0.067. So for the fixtures with linear attention, one position in 8 is
/// spared instead of one in 32: a flip shows as a few positions far off, an error in the
/// kernels as most of them.
const LINEAR_SPARED_FRACTION: usize = 8;
/// Experts quantized on disk (MXFP4) are read as blocks by the fast CPU kernels, which round
/// the activations to q8_0 at decode (2^-8 of each block's largest): measured 4.5e-3 on
/// gpt_oss-b. The reference kernels dequantize and keep F32_BOUND.
const QUANTIZED_ON_DISK_BOUND: f32 = 1e-2;

fn check_logits(name: &str, dtype: DType, imp: Kernels, bound: f32) -> f32 {
    let r = reference(name);
    let model = load(name, dtype, imp);
    let logits = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
    let mut errors = position_errors(&logits, &r.logits);
    errors.sort_by(f32::total_cmp);
    let linear = name.starts_with("qwen3_next") || name.starts_with("qwen3_5_moe");
    let spared = match dtype {
        DType::F32 => 0,
        _ if linear => (errors.len() / LINEAR_SPARED_FRACTION).max(1),
        _ => (errors.len() / 32).max(1),
    };
    let err = errors[errors.len() - 1 - spared];
    assert!(
        err <= bound,
        "{name} {dtype:?} {imp:?}: relative error {err:e} > {bound:e} ({errors:?})"
    );
    err
}

#[test]
fn f32_logits_match_hf_with_both_moe_paths() {
    for name in FIXTURES {
        let fast_bound = if common::quantized_on_disk(name) {
            QUANTIZED_ON_DISK_BOUND
        } else {
            F32_BOUND
        };
        let fast = check_logits(name, DType::F32, Kernels::Fast, fast_bound);
        let slow = check_logits(name, DType::F32, Kernels::Reference, F32_BOUND);
        eprintln!("{name}: f32 max error / max logit: fast {fast:.2e}, reference {slow:.2e}");
    }
}

#[test]
fn greedy_continuations_match_hf() {
    for name in FIXTURES {
        let r = reference(name);
        let model = load(name, DType::F32, Kernels::Fast);
        let gen = generate::greedy(&model, &r.tokens, r.greedy.len(), &[]).unwrap();
        assert_eq!(gen.tokens, r.greedy, "{name}");
    }
}

#[test]
fn half_precision_logits_stay_within_documented_bounds() {
    for name in FIXTURES {
        let (bf16_bound, f16_bound) = match *name {
            "qwen3_5_moe-a" => (QWEN3_5_HALF_BOUND, QWEN3_5_HALF_BOUND),
            "gemma4-a" => GEMMA4_A_HALF_BOUNDS,
            _ => (BF16_BOUND, F16_BOUND),
        };
        let bf16 = check_logits(name, DType::BF16, Kernels::Fast, bf16_bound);
        let f16 = check_logits(name, DType::F16, Kernels::Fast, f16_bound);
        eprintln!("{name}: bf16 {bf16:.2e}, f16 {f16:.2e}");
    }
}

#[test]
fn prefill_equals_one_token_decode_steps() {
    for name in FIXTURES {
        let r = reference(name);
        let model = load(name, DType::F32, Kernels::Fast);
        let all = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
        let mut cache = model.new_cache();
        // Blocks on disk: a decode step's activations are rounded to q8_0, a prefill's not.
        // Linear attention runs a prompt by the chunked delta rule and a step by the recurrent
        // one, two summation orders: qwen3_5_moe-a was off by 1.5e-5 at one position on an AMD
        // EPYC (Zen 4).
        let linear = name.starts_with("qwen3_next") || name.starts_with("qwen3_5_moe");
        let bound = match (common::quantized_on_disk(name), linear) {
            (true, _) => 2.0 * QUANTIZED_ON_DISK_BOUND,
            (false, true) => 3e-5,
            (false, false) => 1e-5,
        };
        for (i, &t) in r.tokens.iter().enumerate() {
            let step = model.forward(&[t], &mut cache).unwrap();
            let err = relative_error(&step.get(0).unwrap(), &all.get(i).unwrap());
            assert!(err <= bound, "{name} position {i}: {err:e}");
        }
        assert_eq!(cache.position(), r.tokens.len());
    }
}

#[test]
fn a_batch_step_equals_each_sequence_stepped_alone() {
    for name in FIXTURES {
        let r = reference(name);
        let model = load(name, DType::F32, Kernels::Fast);
        // Three sequences at different positions: prompts of 1, 4 and all the reference tokens.
        let lens = [1, 4, r.tokens.len()];
        let mut batch: Vec<_> = lens.iter().map(|_| model.new_cache()).collect();
        let mut alone: Vec<_> = lens.iter().map(|_| model.new_cache()).collect();
        for ((&len, b), a) in lens.iter().zip(&mut batch).zip(&mut alone) {
            model.forward(&r.tokens[..len], b).unwrap();
            model.forward(&r.tokens[..len], a).unwrap();
        }
        let mut next = vec![r.greedy[0], r.tokens[0], r.greedy[1]];
        for step in 0..3 {
            let logits = model.forward_batch(&next, &mut batch).unwrap();
            assert_eq!(logits.dims(), &[3, model.config().vocab_size]);
            for (s, cache) in alone.iter_mut().enumerate() {
                let want = model.forward(&[next[s]], cache).unwrap();
                let err = relative_error(&logits.get(s).unwrap(), &want.get(0).unwrap());
                assert!(err <= 1e-5, "{name} step {step} sequence {s}: {err:e}");
                assert_eq!(batch[s].position(), cache.position());
            }
            next = next.iter().map(|&t| (t * 7 + 3) % 100).collect();
        }
        assert!(model.forward_batch(&next[..2], &mut batch).is_err());
    }
}

/// Continuous batching's step: prompt chunks of several lengths beside one-token decode
/// steps, in one pass, give each sequence what `forward_last` of it alone gives.
#[test]
fn a_mixed_step_of_prompt_chunks_and_decodes_equals_each_sequence_alone() {
    for name in FIXTURES {
        let r = reference(name);
        let model = load(name, DType::F32, Kernels::Fast);
        let n = r.tokens.len();
        // Three sequences: one decoding after a prompt of 5, one whose prompt comes in two
        // chunks, one whose whole prompt comes at once.
        let mut batch: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
        let mut alone: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
        model.forward(&r.tokens[..5], &mut batch[0]).unwrap();
        model.forward(&r.tokens[..5], &mut alone[0]).unwrap();
        // Blocks on disk: a one-token step alone rounds its activations to q8_0, the same
        // token among many rows does not.
        let bound = if common::quantized_on_disk(name) {
            2.0 * QUANTIZED_ON_DISK_BOUND
        } else {
            1e-5
        };
        let steps: [[&[u32]; 3]; 2] = [
            [&r.tokens[5..6], &r.tokens[..7], &r.tokens[..n]],
            [&r.tokens[6..7], &r.tokens[7..n - 3], &r.greedy[..1]],
        ];
        for (step, inputs) in steps.iter().enumerate() {
            let mut seqs: Vec<(&[u32], &mut _)> = inputs.iter().copied().zip(&mut batch).collect();
            let logits = model.forward_sequences(&mut seqs).unwrap();
            assert_eq!(logits.dims(), &[3, model.config().vocab_size]);
            for (s, cache) in alone.iter_mut().enumerate() {
                let want = model.forward_last(inputs[s], cache).unwrap();
                let err = relative_error(&logits.get(s).unwrap(), &want);
                assert!(err <= bound, "{name} step {step} sequence {s}: {err:e}");
                assert_eq!(batch[s].position(), cache.position());
            }
        }
    }
}

/// Gemma 4 embeds its image, audio and video placeholders as the pad token, as HF does, also
/// where a text prompt holds one.
#[test]
fn gemma4_placeholders_are_embedded_as_the_pad_token() {
    let model = load("gemma4-a", DType::F32, Kernels::Fast);
    let config = std::fs::read_to_string(common::fixture("gemma4-a").join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let pad = config["text_config"]["pad_token_id"].as_u64().unwrap() as u32;
    let forward = |tokens: &[u32]| model.forward(tokens, &mut model.new_cache()).unwrap();
    let padded = forward(&[5, pad, 7]);
    for key in ["image_token_id", "audio_token_id", "video_token_id"] {
        let id = config[key].as_u64().unwrap() as u32;
        assert_ne!(id, pad);
        let err = relative_error(&forward(&[5, id, 7]), &padded);
        assert_eq!(err, 0.0, "{key}");
    }
}

/// Gemma 4's text model saved on its own (`Gemma4ForCausalLM`: `model_type: gemma4_text`, the
/// text config flat, tensors under `model.`, no towers) computes what the multimodal
/// checkpoint's text model does.
#[test]
fn a_bare_gemma4_text_model_equals_the_multimodal_ones() {
    let dir = common::copy_fixture("gemma4-a");
    common::edit_config(dir.path(), |c| {
        let mut text = c["text_config"].clone();
        text["tie_word_embeddings"] = c["tie_word_embeddings"].clone();
        *c = text;
    });
    common::edit_tensors(dir.path(), |t| {
        let names: Vec<String> = t.keys().cloned().collect();
        for name in names {
            let tensor = t.remove(&name).unwrap();
            if let Some(rest) = name.strip_prefix("model.language_model.") {
                t.insert(format!("model.{rest}"), tensor);
            } else if name == "lm_head.weight" {
                t.insert(name, tensor);
            }
        }
    });
    let r = reference("gemma4-a");
    let model = Model::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.config().model_type, "gemma4_text");
    assert!(model.unrecognized_config_fields().is_empty());
    assert!(model.unread_tensors().is_empty());
    let logits = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
    let err = relative_error(&logits, &r.logits);
    assert!(err <= F32_BOUND, "{err:e}");
}
