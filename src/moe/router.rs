//! Routing: router logits -> softmax scores -> top-k experts per token (ties go to the lower
//! expert index) -> optional renormalisation. Runs on the host over one copy of the logits per
//! layer, never per token.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// How scores become routing weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    /// Experts per token.
    pub top_k: usize,
    /// Divide the chosen probabilities by their sum.
    pub norm_topk_prob: bool,
}

/// The routing decision for a batch of tokens, row-major by token: entry `t * top_k + j` is the
/// j-th choice of token t (best first).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub num_experts: usize,
    pub top_k: usize,
    pub experts: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Routing {
    /// Routes every row of `logits: (tokens, experts)`.
    pub fn from_logits(logits: &Tensor, cfg: RouterConfig) -> Result<Routing> {
        let (_, e) = logits.dims2()?;
        let flat = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Self::from_slice(&flat, e, cfg)
    }

    /// Routes host logits laid out (tokens, num_experts).
    pub fn from_slice(logits: &[f32], num_experts: usize, cfg: RouterConfig) -> Result<Routing> {
        let k = cfg.top_k;
        if k == 0 || k > num_experts || !logits.len().is_multiple_of(num_experts) {
            return Err(Error::Input(format!(
                "cannot route {} logits over {num_experts} experts, top-{k}",
                logits.len()
            )));
        }
        let tokens = logits.len() / num_experts.max(1);
        let mut experts = Vec::with_capacity(tokens * k);
        let mut weights = Vec::with_capacity(tokens * k);
        let mut probs = vec![0f32; num_experts];
        for row in logits.chunks_exact(num_experts) {
            softmax(row, &mut probs);
            let start = experts.len();
            for _ in 0..k {
                let chosen = &experts[start..];
                let best = best_unchosen(&probs, chosen);
                experts.push(best as u32);
                weights.push(probs[best]);
            }
            if cfg.norm_topk_prob {
                let sum: f32 = weights[start..].iter().sum();
                weights[start..].iter_mut().for_each(|w| *w /= sum);
            }
        }
        Ok(Routing {
            num_experts,
            top_k: k,
            experts,
            weights,
        })
    }

    /// Checks a routing (perhaps made by hand) against the tokens and experts it is applied to.
    pub fn check(&self, tokens: usize, num_experts: usize) -> Result<()> {
        let n = tokens * self.top_k;
        if self.top_k == 0 || self.experts.len() != n || self.weights.len() != n {
            return Err(Error::Input(format!(
                "a routing of {} experts and {} weights does not fit {tokens} tokens at top-{}",
                self.experts.len(),
                self.weights.len(),
                self.top_k
            )));
        }
        if let Some(e) = self.experts.iter().find(|&&e| e as usize >= num_experts) {
            return Err(Error::Input(format!(
                "routing names expert {e}, but there are {num_experts}"
            )));
        }
        Ok(())
    }
}

/// The highest-scoring expert not yet chosen; the strict `>` keeps the lowest index on ties.
fn best_unchosen(probs: &[f32], chosen: &[u32]) -> usize {
    let mut best: Option<usize> = None;
    for (i, &p) in probs.iter().enumerate() {
        if chosen.contains(&(i as u32)) {
            continue;
        }
        if best.is_none_or(|b| p > probs[b]) {
            best = Some(i);
        }
    }
    // from_slice checked top_k <= num_experts, so an unchosen expert always exists.
    best.unwrap_or(0)
}

fn softmax(xs: &[f32], out: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = (x - max).exp();
        sum += *o;
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP2: RouterConfig = RouterConfig {
        top_k: 2,
        norm_topk_prob: false,
    };

    #[test]
    fn picks_the_top_scores_best_first() {
        let r = Routing::from_slice(&[0.0, 3.0, 1.0, 2.0], 4, TOP2).unwrap();
        assert_eq!(r.experts, vec![1, 3]);
        let z: f32 = [0.0f32, 3.0, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        assert!((r.weights[0] - 3f32.exp() / z).abs() < 1e-6);
        assert!((r.weights[1] - 2f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_lower_expert_index() {
        let r = Routing::from_slice(&[1.0, 5.0, 5.0, 5.0, 0.0], 5, TOP2).unwrap();
        assert_eq!(r.experts, vec![1, 2]);
        let all_equal = Routing::from_slice(&[0.5; 6], 6, TOP2).unwrap();
        assert_eq!(all_equal.experts, vec![0, 1]);
    }

    #[test]
    fn renormalised_weights_sum_to_one() {
        let cfg = RouterConfig {
            top_k: 3,
            norm_topk_prob: true,
        };
        let r = Routing::from_slice(&[0.1, -2.0, 0.7, 0.3, 1.5, -0.4], 6, cfg).unwrap();
        assert_eq!(r.experts, vec![4, 2, 3]);
        assert!((r.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn impossible_requests_are_errors_not_panics() {
        assert!(Routing::from_slice(&[1.0, 2.0], 0, TOP2).is_err());
        assert!(Routing::from_slice(&[1.0, 2.0, 3.0], 2, TOP2).is_err());
        assert!(Routing::from_slice(&[1.0], 1, TOP2).is_err());
        let r = Routing::from_slice(&[1.0, 2.0, 3.0], 3, TOP2).unwrap();
        assert!(r.check(1, 3).is_ok());
        assert!(r.check(2, 3).is_err());
        assert!(r.check(1, 2).is_err());
    }

    #[test]
    fn nan_logits_do_not_panic_and_still_pick_distinct_experts() {
        let r = Routing::from_slice(&[f32::NAN, 1.0, f32::NAN], 3, TOP2).unwrap();
        assert_eq!(r.experts.len(), 2);
        assert_ne!(r.experts[0], r.experts[1]);
    }
}
