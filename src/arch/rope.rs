//! RoPE settings from either config style: `rope_theta` + `rope_scaling` (published
//! checkpoints) or `rope_parameters` (transformers 5); the original RoPE or YaRN, over all of
//! each head's dimensions or the first `partial_rotary_factor` of them.

use serde_json::Value;

use super::Fields;
use crate::error::Result;
use crate::spec::{RopeConfig, Yarn};

/// RoPE from either style: `rope_theta` + `rope_scaling` (published checkpoints) or
/// `rope_parameters` (transformers 5): the original RoPE, or YaRN with HF's defaults for what
/// the config leaves out.
/// `default_partial`: the share of each head that rotates when the config does not say, for the
/// families that read `partial_rotary_factor` (`None`: the field is not theirs, and all of
/// each head rotates).
pub(super) fn rope(
    f: &mut Fields,
    default_theta: f64,
    default_partial: Option<f64>,
) -> Result<RopeConfig> {
    let mut theta = f.f64_or("rope_theta", default_theta)?;
    let mut partial_rotary_factor = match default_partial {
        Some(p) => f.f64_or("partial_rotary_factor", p)?,
        None => 1.0,
    };
    let mut yarn = None;
    for field in ["rope_parameters", "rope_scaling"] {
        let Some(value) = f.value(field) else {
            continue;
        };
        let Value::Object(params) = value else {
            return Err(f.error(field, format!("expected an object or null, got {value}")));
        };
        // The type first: an unimplemented RoPE variant is the error worth reporting, not
        // the parameters that come with it.
        let mut kind = "default";
        for key in ["rope_type", "type"] {
            match params.get(key).map(|v| (v, v.as_str())) {
                None | Some((_, Some("default"))) => {}
                Some((_, Some("yarn"))) => kind = "yarn",
                Some((v, _)) => {
                    return Err(f.error(
                        &format!("{field}.{key}"),
                        format!("{v} is not implemented (only default and yarn)"),
                    ))
                }
            }
        }
        let number = |key: &str| -> Result<Option<f64>> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    f.error(
                        &format!("{field}.{key}"),
                        format!("expected a number, got {v}"),
                    )
                }),
            }
        };
        let yarn_keys = [
            "factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "truncate",
            "attention_factor",
            "mscale",
            "mscale_all_dim",
        ];
        for key in params.keys() {
            // Read by the families with partial rotation (Qwen3-Next, Qwen3.5) alone. M-RoPE's
            // sections (Qwen3.5) give image patches a position per axis; a text token has the
            // same position on every axis, so its rotation is plain RoPE's.
            let theirs = [
                "partial_rotary_factor",
                "mrope_section",
                "mrope_interleaved",
            ];
            let known = ["rope_type", "type", "rope_theta"].contains(&key.as_str())
                || (default_partial.is_some() && theirs.contains(&key.as_str()))
                || (kind == "yarn" && yarn_keys.contains(&key.as_str()));
            if !known {
                return Err(f.error(&format!("{field}.{key}"), "is not supported"));
            }
        }
        if let Some(t) = number("rope_theta")? {
            theta = t;
        }
        if let Some(p) = number("partial_rotary_factor")? {
            partial_rotary_factor = p;
        }
        if kind == "yarn" {
            let truncate = match params.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    let name = format!("{field}.truncate");
                    return Err(f.error(&name, format!("expected true or false, got {v}")));
                }
            };
            yarn = Some(YarnFields {
                field,
                factor: number("factor")?,
                original: number("original_max_position_embeddings")?,
                beta_fast: number("beta_fast")?,
                beta_slow: number("beta_slow")?,
                truncate,
                attention_factor: number("attention_factor")?,
                mscale: number("mscale")?,
                mscale_all_dim: number("mscale_all_dim")?,
            });
        }
    }
    let yarn = match yarn {
        None => None,
        Some(y) => Some(y.resolve(f)?),
    };
    Ok(RopeConfig {
        theta,
        yarn,
        partial_rotary_factor,
        proportional: false,
    })
}

/// YaRN's fields as the config gives them, before HF's defaults.
struct YarnFields {
    field: &'static str,
    factor: Option<f64>,
    original: Option<f64>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    truncate: bool,
    attention_factor: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
}

impl YarnFields {
    /// HF's `_compute_yarn_parameters` defaults: the original context from a top-level
    /// `original_max_position_embeddings`, else the rope field's, else
    /// `max_position_embeddings`; the factor from the two contexts when absent; betas 32 and
    /// 1 when absent or 0; the attention factor from `mscale`/`mscale_all_dim` or the factor.
    fn resolve(self, f: &mut Fields) -> Result<Yarn> {
        let max_positions = f.opt_usize("max_position_embeddings")?.unwrap_or(0);
        let original = match f.opt_usize("original_max_position_embeddings")? {
            Some(o) => o as f64,
            None => self.original.unwrap_or(max_positions as f64),
        };
        let name = |key: &str| format!("{}.{key}", self.field);
        if !(original.is_finite() && original >= 1.0 && original.fract() == 0.0) {
            let key = name("original_max_position_embeddings");
            return Err(f.error(&key, format!("{original} is not a context length")));
        }
        let factor = self.factor.unwrap_or(max_positions as f64 / original);
        let nonzero = |v: Option<f64>, default: f64| v.filter(|&v| v != 0.0).unwrap_or(default);
        let (beta_fast, beta_slow) = (nonzero(self.beta_fast, 32.0), nonzero(self.beta_slow, 1.0));
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention_factor = match (self.attention_factor, self.mscale, self.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                mscale(factor, m) / mscale(factor, all)
            }
            _ => mscale(factor, 1.0),
        };
        for (key, v) in [
            ("factor", factor),
            ("beta_fast", beta_fast),
            ("beta_slow", beta_slow),
            ("attention_factor", attention_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(f.error(&name(key), format!("{v} must be finite and > 0")));
            }
        }
        Ok(Yarn {
            factor,
            original_max_position_embeddings: original as usize,
            beta_fast,
            beta_slow,
            truncate: self.truncate,
            attention_factor,
            mscale_all_dim: self.mscale_all_dim,
        })
    }
}
