//! How far one run's next-token distributions are from a reference run's on the same tokens:
//! the KL divergence and top-1 agreement that llama.cpp's perplexity tool reports with
//! `--kl-divergence`, and the perplexity of a run on the text itself. Used to put a number on
//! what a weight format or a smaller top-k costs.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Agreement of two runs over the same positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    pub positions: usize,
    /// Mean over positions of KL(P_reference ‖ P_other), in nats.
    pub kl_mean: f64,
    /// The largest KL at any one position.
    pub kl_max: f64,
    /// Share of positions where both runs' most likely tokens are the same.
    pub top1: f64,
}

impl Agreement {
    /// The agreement over all positions of `parts` (runs over different stretches of text).
    pub fn merge(parts: &[Agreement]) -> Agreement {
        let positions: usize = parts.iter().map(|a| a.positions).sum();
        let weighted = |f: fn(&Agreement) -> f64| {
            parts.iter().map(|a| f(a) * a.positions as f64).sum::<f64>() / positions.max(1) as f64
        };
        Agreement {
            positions,
            kl_mean: weighted(|a| a.kl_mean),
            kl_max: parts.iter().map(|a| a.kl_max).fold(0.0, f64::max),
            top1: weighted(|a| a.top1),
        }
    }
}

/// The summed negative log-likelihood, in nats, of each next token of `tokens` under the
/// logits (positions, vocab) computed for `tokens`: position i predicts token i + 1, so the
/// last position predicts nothing here. Returns (sum, tokens scored); perplexity is
/// exp(sum / scored).
pub fn next_token_nll(logits: &Tensor, tokens: &[u32]) -> Result<(f64, usize)> {
    if logits.rank() != 2 || logits.dim(0)? != tokens.len() {
        return Err(Error::Input(format!(
            "logits {:?} do not cover the {} tokens they are scored on",
            logits.dims(),
            tokens.len()
        )));
    }
    let rows = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let mut sum = 0f64;
    for (row, &next) in rows.iter().zip(&tokens[1.min(tokens.len())..]) {
        let lp = log_softmax(row);
        let p = lp.get(next as usize).ok_or_else(|| {
            Error::Input(format!(
                "token {next} is outside the vocabulary of {}",
                row.len()
            ))
        })?;
        sum -= p;
    }
    Ok((sum, tokens.len().saturating_sub(1)))
}

/// Compares logits (positions, vocab) of a run against the reference run's.
pub fn compare(reference: &Tensor, other: &Tensor) -> Result<Agreement> {
    if reference.dims() != other.dims() || reference.rank() != 2 {
        return Err(Error::Input(format!(
            "logits to compare must both be (positions, vocab), got {:?} and {:?}",
            reference.dims(),
            other.dims()
        )));
    }
    let p = reference.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let q = other.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let (mut kl_sum, mut kl_max, mut same) = (0f64, 0f64, 0usize);
    for (p, q) in p.iter().zip(&q) {
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        let kl: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
        // Rounding can make a KL of identical rows a hair below zero.
        let kl = kl.max(0.0);
        kl_sum += kl;
        kl_max = kl_max.max(kl);
        same += usize::from(argmax(p) == argmax(q));
    }
    let n = p.len();
    Ok(Agreement {
        positions: n,
        kl_mean: kl_sum / n.max(1) as f64,
        kl_max,
        top1: same as f64 / n.max(1) as f64,
    })
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = x.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|v| v - log_sum).collect()
}

/// The first index of the largest value (ties to the lower index).
fn argmax(x: &[f64]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn identical_runs_agree_and_a_known_shift_has_its_known_kl() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0f32, 1.0, 2.0], [3.0, 0.0, 0.0]], &dev).unwrap();
        let same = compare(&a, &a).unwrap();
        assert_eq!(same.top1, 1.0);
        assert!(same.kl_mean < 1e-12);
        // P = (1/2, 1/2), Q = softmax(0, 1) = (1, e) / (1 + e): KL = Σ P ln(P / Q).
        let p = Tensor::new(&[[0f32, 0.0]], &dev).unwrap();
        let q = Tensor::new(&[[0f32, 1.0]], &dev).unwrap();
        let e = std::f64::consts::E;
        let want = 0.5 * (0.5 * (1.0 + e)).ln() + 0.5 * (0.5 * (1.0 + e) / e).ln();
        let got = compare(&p, &q).unwrap();
        assert!(
            (got.kl_mean - want).abs() < 1e-6,
            "{} vs {want}",
            got.kl_mean
        );
        // Both argmaxes are index 0 for P (a tie, lower index) and 1 for Q.
        assert_eq!(got.top1, 0.0);
    }

    #[test]
    fn nll_scores_each_next_token_and_merged_agreements_weigh_by_positions() {
        let dev = Device::Cpu;
        // Uniform over 4 tokens: every next token costs ln 4, whichever it is.
        let uniform = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
        let (sum, n) = next_token_nll(&uniform, &[0, 3, 1]).unwrap();
        assert_eq!(n, 2);
        assert!((sum - 2.0 * 4f64.ln()).abs() < 1e-12);
        // A row sure of token 2 (logit 40): nearly free when it comes, ~40 nats when not.
        let sure = Tensor::new(&[[0f32, 0.0, 40.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        assert!(next_token_nll(&sure, &[0, 2]).unwrap().0 < 1e-12);
        assert!((next_token_nll(&sure, &[0, 1]).unwrap().0 - 40.0).abs() < 1e-9);
        assert!(next_token_nll(&sure, &[0, 7]).is_err());
        assert!(next_token_nll(&sure, &[0, 1, 2]).is_err());

        let a = Agreement {
            positions: 1,
            kl_mean: 0.4,
            kl_max: 0.4,
            top1: 0.0,
        };
        let b = Agreement {
            positions: 3,
            kl_mean: 0.0,
            kl_max: 0.1,
            top1: 1.0,
        };
        let m = Agreement::merge(&[a, b]);
        assert_eq!((m.positions, m.kl_max, m.top1), (4, 0.4, 0.75));
        assert!((m.kl_mean - 0.1).abs() < 1e-12);
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        assert!(compare(&a, &b).is_err());
    }
}
