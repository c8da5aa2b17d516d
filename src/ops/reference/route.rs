//! Routing on the host: router logits -> each token's top-k experts (best first, ties to the
//! lower expert index) and their weights, for every `RouterSpec`. It is the one definition of
//! what a spec means (written after HF's routers: Mixtral/Qwen's softmax then top-k, gpt-oss's
//! top-k then softmax, DeepSeek-V3's grouped sigmoid with a selection-only bias); the CPU
//! backend runs it as it is, and the CUDA route kernel is tested against it.

use crate::error::{Error, Result};
use crate::spec::{GroupLimit, RouterSpec, Scoring, Selection};

/// The routing decision for a batch of tokens, row-major by token: entry `t * top_k + j` is the
/// j-th choice of token t (best first).
#[derive(Debug, Clone, PartialEq)]
pub struct HostRouting {
    pub num_experts: usize,
    pub top_k: usize,
    pub experts: Vec<u32>,
    pub weights: Vec<f32>,
}

impl HostRouting {
    /// Routes host logits laid out (tokens, num_experts). `correction`: one selection bias per
    /// expert, required exactly when the spec has one.
    pub fn route(
        logits: &[f32],
        num_experts: usize,
        spec: &RouterSpec,
        correction: Option<&[f32]>,
    ) -> Result<HostRouting> {
        let k = spec.top_k;
        let e = num_experts;
        if k == 0 || k > e || !logits.len().is_multiple_of(e) {
            return Err(Error::Input(format!(
                "cannot route {} logits over {e} experts, top-{k}",
                logits.len()
            )));
        }
        if spec.correction_bias != correction.is_some() || correction.is_some_and(|c| c.len() != e)
        {
            return Err(Error::Input(format!(
                "the router's correction bias does not match its spec ({} experts)",
                e
            )));
        }
        if let Some(GroupLimit { groups, keep }) = spec.group_limit {
            if groups == 0 || !e.is_multiple_of(groups) || keep == 0 || keep > groups {
                return Err(Error::Input(format!(
                    "cannot keep {keep} of {groups} groups of {e} experts"
                )));
            }
        }
        let tokens = logits.len() / e;
        let mut experts = Vec::with_capacity(tokens * k);
        let mut weights = Vec::with_capacity(tokens * k);
        if spec.group_limit.is_some() && spec.selection == Selection::TopKThenScore {
            return Err(Error::Input(
                "a group limit needs scores to choose by (score-then-top-k)".into(),
            ));
        }
        let mut scores = vec![0f32; e];
        let mut choice = vec![0f32; e];
        let mut chosen_logits = vec![0f32; k];
        for row in logits.chunks_exact(e) {
            // What the top-k is taken over.
            match spec.selection {
                Selection::ScoreThenTopK => score(spec.scoring, row, &mut scores),
                Selection::TopKThenScore => scores.copy_from_slice(row),
            }
            choice.copy_from_slice(&scores);
            if let Some(bias) = correction {
                choice.iter_mut().zip(bias).for_each(|(c, b)| *c += b);
            }
            if let Some(limit) = spec.group_limit {
                mask_groups(&mut choice, limit);
            }
            let start = experts.len();
            for _ in 0..k {
                let best = best_unchosen(&choice, &experts[start..]);
                experts.push(best as u32);
                weights.push(scores[best]);
            }
            let chosen = &mut weights[start..];
            if spec.selection == Selection::TopKThenScore {
                chosen_logits.copy_from_slice(chosen);
                score(spec.scoring, &chosen_logits, chosen);
            }
            if spec.renormalise {
                // HF's DeepSeek-V3 adds 1e-20, so that sigmoid weights that all underflow give
                // 0, not NaN; a softmax's chosen sum is at least 1/E, which it cannot move.
                let sum: f32 = chosen.iter().sum::<f32>() + 1e-20;
                chosen.iter_mut().for_each(|w| *w /= sum);
            }
            if spec.scale != 1.0 {
                let scale = spec.scale as f32;
                chosen.iter_mut().for_each(|w| *w *= scale);
            }
        }
        Ok(HostRouting {
            num_experts,
            top_k: k,
            experts,
            weights,
        })
    }

    /// Multiplies each choice's weight by `scale[expert]`, one entry per expert.
    pub fn scale_by_expert(&mut self, scale: &[f32]) -> Result<()> {
        if scale.len() != self.num_experts {
            return Err(Error::Input(format!(
                "{} per-expert scales for {} experts",
                scale.len(),
                self.num_experts
            )));
        }
        self.check(self.weights.len() / self.top_k.max(1), self.num_experts)?;
        for (w, &e) in self.weights.iter_mut().zip(&self.experts) {
            *w *= scale[e as usize];
        }
        Ok(())
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

fn score(scoring: Scoring, xs: &[f32], out: &mut [f32]) {
    match scoring {
        Scoring::Softmax => softmax(xs, out),
        Scoring::Sigmoid => {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = 1.0 / (1.0 + (-x).exp());
            }
        }
    }
}

/// DeepSeek-V3's group limit: rank the groups by the sum of their two best values, keep the
/// best `keep`, and set every value outside them to -inf (HF's `masked_fill(..., -inf)`, as in
/// DeepSeek's own inference code: an expert of a dropped group is never chosen, even over a
/// kept one whose correction bias makes its value negative).
fn mask_groups(choice: &mut [f32], GroupLimit { groups, keep }: GroupLimit) {
    let size = choice.len() / groups;
    let group_scores: Vec<f32> = choice
        .chunks_exact(size)
        .map(|g| {
            let first = best_unchosen(g, &[]);
            let second = if size > 1 {
                g[best_unchosen(g, &[first as u32])]
            } else {
                0.0
            };
            g[first] + second
        })
        .collect();
    let mut kept = Vec::with_capacity(keep);
    for _ in 0..keep {
        let best = best_unchosen(&group_scores, &kept);
        kept.push(best as u32);
    }
    for (g, values) in choice.chunks_exact_mut(size).enumerate() {
        if !kept.contains(&(g as u32)) {
            values.fill(f32::NEG_INFINITY);
        }
    }
}

/// The highest value not yet chosen; the strict `>` keeps the lowest index on ties.
fn best_unchosen(values: &[f32], chosen: &[u32]) -> usize {
    let mut best: Option<usize> = None;
    for (i, &p) in values.iter().enumerate() {
        if chosen.contains(&(i as u32)) {
            continue;
        }
        if best.is_none_or(|b| p > values[b]) {
            best = Some(i);
        }
    }
    // Callers ask for at most values.len() choices, so an unchosen one always exists.
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

    const TOP2: RouterSpec = RouterSpec {
        top_k: 2,
        scoring: Scoring::Softmax,
        selection: Selection::ScoreThenTopK,
        logit_bias: false,
        correction_bias: false,
        group_limit: None,
        renormalise: false,
        scale: 1.0,
        f32_logits: false,
    };

    fn route(logits: &[f32], e: usize, spec: RouterSpec) -> HostRouting {
        HostRouting::route(logits, e, &spec, None).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn picks_the_top_scores_best_first() {
        let r = route(&[0.0, 3.0, 1.0, 2.0], 4, TOP2);
        assert_eq!(r.experts, vec![1, 3]);
        let z: f32 = [0.0f32, 3.0, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        assert!(close(&r.weights, &[3f32.exp() / z, 2f32.exp() / z]));
    }

    #[test]
    fn ties_go_to_the_lower_expert_index() {
        let r = route(&[1.0, 5.0, 5.0, 5.0, 0.0], 5, TOP2);
        assert_eq!(r.experts, vec![1, 2]);
        assert_eq!(route(&[0.5; 6], 6, TOP2).experts, vec![0, 1]);
    }

    #[test]
    fn renormalised_weights_sum_to_one() {
        let spec = RouterSpec::softmax_top_k(3, true);
        let r = route(&[0.1, -2.0, 0.7, 0.3, 1.5, -0.4], 6, spec);
        assert_eq!(r.experts, vec![4, 2, 3]);
        assert!((r.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    /// gpt-oss and Granite: a softmax over the k chosen logits equals the renormalised softmax
    /// over all of them (the Mixtral rule), and a scale multiplies the result.
    #[test]
    fn top_k_then_softmax_equals_renormalised_softmax_then_top_k() {
        let logits = [0.3, -1.0, 2.2, 0.9, 2.2, -0.5, 1.1, 0.0];
        let first = RouterSpec {
            selection: Selection::TopKThenScore,
            top_k: 3,
            ..TOP2
        };
        let renorm = RouterSpec::softmax_top_k(3, true);
        let (a, b) = (route(&logits, 8, first), route(&logits, 8, renorm));
        assert_eq!(a.experts, vec![2, 4, 6]);
        assert_eq!(a.experts, b.experts);
        assert!(close(&a.weights, &b.weights));
        let scaled = route(
            &logits,
            8,
            RouterSpec {
                scale: 2.5,
                ..first
            },
        );
        let doubled: Vec<f32> = a.weights.iter().map(|w| w * 2.5).collect();
        assert!(close(&scaled.weights, &doubled));
    }

    /// DeepSeek-V3 as HF computes it: sigmoid scores, a correction bias that changes the
    /// choice but not the weights, groups ranked by their two best biased scores, weights
    /// renormalised and scaled.
    #[test]
    fn grouped_sigmoid_with_a_selection_bias_follows_deepseek_v3() {
        let logits = [2.0, 1.5, -1.0, 0.0, 0.5, 0.4, 0.3, 3.0];
        let bias = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0];
        let spec = RouterSpec {
            top_k: 2,
            scoring: Scoring::Sigmoid,
            selection: Selection::ScoreThenTopK,
            logit_bias: false,
            correction_bias: true,
            group_limit: Some(GroupLimit { groups: 4, keep: 2 }),
            renormalise: true,
            scale: 2.5,
            f32_logits: true,
        };
        let r = HostRouting::route(&logits, 8, &spec, Some(&bias)).unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        // Groups {0,1}, {2,3}, {4,5}, {6,7}: sums of biased scores s(2)+s(1.5), s(-1)+s(0),
        // s(.5)+s(.4), s(.3)+2+s(3); groups 3 and 0 stay. Expert 6 wins on its bias alone,
        // then 7; the weights are the unbiased scores.
        assert_eq!(r.experts, vec![6, 7]);
        let (w6, w7) = (s(0.3), s(3.0));
        assert!(close(
            &r.weights,
            &[2.5 * w6 / (w6 + w7), 2.5 * w7 / (w6 + w7)]
        ));
        // Without the bias the best two are 7 and 0.
        let plain = RouterSpec {
            correction_bias: false,
            ..spec
        };
        assert_eq!(route(&logits, 8, plain).experts, vec![7, 0]);
    }

    #[test]
    fn experts_of_dropped_groups_are_never_chosen() {
        // Biased values all negative: the kept group's experts score below zero, and an
        // expert of the dropped group must still not win (HF 5's masked_fill(-inf); the
        // remote code of DeepSeek-V3's hub repository filled 0.0, which would let it).
        let logits = [-5.0, -6.0, -9.0, -9.5];
        let bias = [-1.0; 4];
        let spec = RouterSpec {
            top_k: 1,
            scoring: Scoring::Sigmoid,
            correction_bias: true,
            group_limit: Some(GroupLimit { groups: 2, keep: 1 }),
            ..TOP2
        };
        let r = HostRouting::route(&logits, 4, &spec, Some(&bias)).unwrap();
        assert_eq!(r.experts, vec![0]);
    }

    #[test]
    fn impossible_requests_are_errors_not_panics() {
        let bad = |logits: &[f32], e, spec: RouterSpec, c: Option<&[f32]>| {
            HostRouting::route(logits, e, &spec, c).is_err()
        };
        assert!(bad(&[1.0, 2.0], 0, TOP2, None));
        assert!(bad(&[1.0, 2.0, 3.0], 2, TOP2, None));
        assert!(bad(&[1.0], 1, TOP2, None));
        let needs_bias = RouterSpec {
            correction_bias: true,
            ..TOP2
        };
        assert!(bad(&[1.0, 2.0, 3.0], 3, needs_bias, None));
        assert!(bad(&[1.0, 2.0, 3.0], 3, needs_bias, Some(&[0.0; 2])));
        assert!(bad(&[1.0, 2.0, 3.0], 3, TOP2, Some(&[0.0; 3])));
        let groups = RouterSpec {
            group_limit: Some(GroupLimit { groups: 2, keep: 1 }),
            ..TOP2
        };
        assert!(bad(&[1.0, 2.0, 3.0], 3, groups, None));
        let grouped_logits = RouterSpec {
            selection: Selection::TopKThenScore,
            ..groups
        };
        assert!(bad(&[1.0, 2.0, 3.0, 4.0], 4, grouped_logits, None));
        let r = route(&[1.0, 2.0, 3.0], 3, TOP2);
        assert!(r.check(1, 3).is_ok());
        assert!(r.check(2, 3).is_err());
        assert!(r.check(1, 2).is_err());
    }

    #[test]
    fn nan_logits_do_not_panic_and_still_pick_distinct_experts() {
        let r = route(&[f32::NAN, 1.0, f32::NAN], 3, TOP2);
        assert_eq!(r.experts.len(), 2);
        assert_ne!(r.experts[0], r.experts[1]);
    }
}
