//! The slow twin of attention: candle's ops with the mask written out. Also the CUDA path,
//! where candle's ops run on the GPU.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::ops::AttentionShape;

/// q: (nh, t, hd), k (nkv, s, hd) and v (nkv, s, dv), all f32, the last t positions of k and v
/// those of the queries -> (t, nh * dv).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, a: &AttentionShape) -> Result<Tensor> {
    let (nh, t, hd) = q.dims3()?;
    let (nkv, s) = (a.kv_heads, k.dim(1)?);
    // Grouped-query attention without copying keys: the n_rep query heads that share a kv
    // head are consecutive, so q regroups as (nkv, n_rep * t, hd).
    let n_rep = nh / nkv;
    let q = q.reshape((nkv, n_rep * t, hd))?;
    let scores = (q.matmul(&k.t()?)? * a.scale)?; // (nkv, n_rep * t, s)
    let mut scores = scores.reshape((nkv, n_rep, t, s))?;
    let window_cuts = a.window.is_some_and(|w| w < s);
    if t > 1 || window_cuts {
        scores = scores.broadcast_add(&mask(t, s - t, a.window, q.device())?)?;
    }
    let probs = match &a.sinks {
        None => candle_nn::ops::softmax_last_dim(&scores)?,
        Some(sinks) => {
            // Each head's sink logit as one more column, softmaxed with the scores, dropped.
            let sinks = Tensor::from_slice(sinks, (nkv, n_rep, 1, 1), q.device())?
                .to_dtype(scores.dtype())?
                .broadcast_as((nkv, n_rep, t, 1))?
                .contiguous()?;
            let with_sinks = Tensor::cat(&[&scores.contiguous()?, &sinks], 3)?;
            candle_nn::ops::softmax_last_dim(&with_sinks)?
                .narrow(3, 0, s)?
                .contiguous()?
        }
    };
    let dv = v.dim(2)?;
    // (nkv, n_rep * t, dv); values that are the first columns of wider rows copied first
    let out = probs
        .reshape((nkv, n_rep * t, s))?
        .matmul(&v.contiguous()?)?;
    Ok(out
        .reshape((nh, t, dv))?
        .transpose(0, 1)?
        .reshape((t, nh * dv))?)
}

/// The mask for `t` new tokens after `cached` ones: (t, cached + t) f32, -inf where query i
/// (at position cached + i) may not see key j: j in the future, or, with a window w, j at or
/// before cached + i - w.
pub fn mask(t: usize, cached: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let s = cached + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let pos = cached + i;
            (0..s).map(move |j| {
                let past_window = window.is_some_and(|w| j + w <= pos);
                if j > pos || past_window {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, s), device)?)
}
