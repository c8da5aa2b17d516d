//! The MoE kernels of kernels/*.cu on candle's CUDA device: routing, alignment, the experts'
//! FFN for few tokens per expert (decode) and the weighted combine. Each takes and returns candle tensors on one CUDA device; launches go on
//! the device's stream, in order with candle's own work. The slow twins are the CPU's router
//! (`moe::Routing`) and grouping (`ops::cpu::ExpertGroups`); the tests below compare them.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// PTX of each kernels/*.cu, compiled by build.rs.
mod ptx {
    pub const ROUTE: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_route.ptx"));
    pub const ALIGN: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_align.ptx"));
    pub const COMBINE: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_combine.ptx"));
    pub const EXPERT_FFN: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_expert_ffn.ptx"));
}

/// Experts one routing warp can hold in registers (MAX_PER_LANE x 32 in moe_route.cu).
pub const MAX_ROUTED_EXPERTS: usize = 512;
/// Choices one warp can hand out (one per lane).
pub const MAX_TOP_K: usize = 32;
/// Tokens one routing block handles (a warp each).
const ROUTE_WARPS: u32 = 8;
const THREADS: u32 = 256;

/// How router logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// logits: (tokens, E) f32/bf16/f16 -> (experts (tokens, k) u32, weights (tokens, k) f32): the
/// top `top_k` scores of each token, best first, ties to the lower expert index; renormalised
/// to sum to one when asked, then multiplied by `scale`.
pub fn route(
    logits: &Tensor,
    top_k: usize,
    scoring: Scoring,
    renormalise: bool,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let (tokens, e) = logits.dims2()?;
    if e == 0 || e > MAX_ROUTED_EXPERTS || top_k == 0 || top_k > e.min(MAX_TOP_K) {
        return Err(Error::Input(format!(
            "the CUDA router takes up to {MAX_ROUTED_EXPERTS} experts and top-k up to \
             {MAX_TOP_K}, got top-{top_k} of {e}"
        )));
    }
    let dev = cuda_device(logits)?;
    let experts = zeros::<u32>(&dev, tokens * top_k)?;
    let weights = zeros::<f32>(&dev, tokens * top_k)?;
    if tokens > 0 {
        let outputs = (&experts, &weights);
        let args = RouteArgs {
            tokens: tokens as i32,
            experts: e as i32,
            top_k: top_k as i32,
            sigmoid: i32::from(scoring == Scoring::Sigmoid),
            renormalise: i32::from(renormalise),
            scale,
        };
        match logits.dtype() {
            DType::F32 => launch_route::<f32>("moe_route_f32", logits, outputs, &args, &dev)?,
            DType::BF16 => launch_route::<bf16>("moe_route_bf16", logits, outputs, &args, &dev)?,
            DType::F16 => launch_route::<f16>("moe_route_f16", logits, outputs, &args, &dev)?,
            other => return Err(unsupported("router logits", other)),
        }
    }
    Ok((
        tensor(experts, &dev, (tokens, top_k)),
        tensor(weights, &dev, (tokens, top_k)),
    ))
}

/// The scalar arguments of the routing kernel, in its order.
struct RouteArgs {
    tokens: i32,
    experts: i32,
    top_k: i32,
    sigmoid: i32,
    renormalise: i32,
    scale: f32,
}

fn launch_route<T: CudaDType + DeviceRepr>(
    name: &str,
    logits: &Tensor,
    (experts, weights): (&CudaSlice<u32>, &CudaSlice<f32>),
    a: &RouteArgs,
    dev: &CudaDevice,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: ((a.tokens as u32).div_ceil(ROUTE_WARPS), 1, 1),
        block_dim: (ROUTE_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    with_view::<T, _>(logits, |input| {
        let func = dev.get_or_load_custom_func(name, "moe_route", ptx::ROUTE)?;
        let mut b = func.builder();
        b.arg(&input)
            .arg(experts)
            .arg(weights)
            .arg(&a.tokens)
            .arg(&a.experts)
            .arg(&a.top_k)
            .arg(&a.sigmoid)
            .arg(&a.renormalise)
            .arg(&a.scale);
        // SAFETY: the kernel reads tokens x E logits and writes tokens x k of each output, the
        // sizes allocated by the caller; E and k are within the kernel's register budget.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    })
}

/// The routing's slots (slot = token x k + choice) in expert order, each expert's run padded to
/// whole tiles of `tile` rows, as a grouped GEMM over expert tiles reads them. All u32, on the
/// device; sizes are upper bounds known without reading anything back.
#[derive(Debug, Clone)]
pub struct Alignment {
    /// (E): slots per expert.
    pub counts: Tensor,
    /// (E + 1): where each expert's padded run starts; the last entry is the padded total.
    pub offsets: Tensor,
    /// (capacity): the slot at each row, or `slots` (tokens x k) for a padding row.
    pub sorted_slots: Tensor,
    /// (slots): the row each slot landed at.
    pub slot_position: Tensor,
    /// (capacity / tile): the expert of each tile; entries from `num_tiles` on are unused.
    pub tile_expert: Tensor,
    /// (1): tiles in use.
    pub num_tiles: Tensor,
    pub tile: usize,
}

/// experts: (tokens, k) u32 ids below `num_experts` -> their [`Alignment`] to `tile` rows.
pub fn align(experts: &Tensor, num_experts: usize, tile: usize) -> Result<Alignment> {
    let (tokens, k) = experts.dims2()?;
    if experts.dtype() != DType::U32 || num_experts == 0 || num_experts > 4096 || tile == 0 {
        return Err(Error::Input(format!(
            "cannot align {:?} expert ids over {num_experts} experts in tiles of {tile}",
            experts.dtype()
        )));
    }
    let dev = cuda_device(experts)?;
    let slots = tokens * k;
    // Every expert's run rounds up by at most tile - 1 rows.
    let capacity = (slots + num_experts * (tile - 1)).div_ceil(tile) * tile;
    let counts = zeros::<u32>(&dev, num_experts)?;
    let offsets = zeros::<u32>(&dev, num_experts + 1)?;
    let sorted_slots = zeros::<u32>(&dev, capacity)?;
    let slot_position = zeros::<u32>(&dev, slots)?;
    let tile_expert = zeros::<u32>(&dev, capacity / tile)?;
    let num_tiles = zeros::<u32>(&dev, 1)?;
    let (n_slots, n_experts, n_tile) = (slots as i32, num_experts as i32, tile as i32);
    with_view::<u32, _>(experts, |ids| {
        let func = dev.get_or_load_custom_func("moe_align_offsets", "moe_align", ptx::ALIGN)?;
        let mut b = func.builder();
        b.arg(&ids)
            .arg(&n_slots)
            .arg(&n_experts)
            .arg(&n_tile)
            .arg(&counts)
            .arg(&offsets)
            .arg(&tile_expert)
            .arg(&num_tiles);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 4 * num_experts as u32,
        };
        // SAFETY: sizes as allocated above; the kernel drops ids of num_experts or more.
        unsafe { b.launch(cfg) }.w()?;

        let func = dev.get_or_load_custom_func("moe_align_scatter", "moe_align", ptx::ALIGN)?;
        let mut b = func.builder();
        b.arg(&ids)
            .arg(&n_slots)
            .arg(&offsets)
            .arg(&sorted_slots)
            .arg(&slot_position);
        let cfg = LaunchConfig {
            grid_dim: (num_experts as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; rows beyond an expert's padded run are never written.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    })?;
    Ok(Alignment {
        counts: tensor(counts, &dev, num_experts),
        offsets: tensor(offsets, &dev, num_experts + 1),
        sorted_slots: tensor(sorted_slots, &dev, capacity),
        slot_position: tensor(slot_position, &dev, slots),
        tile_expert: tensor(tile_expert, &dev, capacity / tile),
        num_tiles: tensor(num_tiles, &dev, 1),
        tile,
    })
}

/// The routed experts' FFN for few tokens per expert (decode): each weight row is read once
/// for up to 4 of an expert's tokens. x: (tokens, H); gate_up: (E, 2I, H), gate rows then up
/// rows; down: (E, H, I), all of one dtype (f32/bf16/f16) -> (capacity, H) of it, one row per
/// aligned slot (padding rows left zero), for [`combine`].
pub fn expert_ffn(
    x: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    alignment: &Alignment,
    top_k: usize,
) -> Result<Tensor> {
    let (_, h) = x.dims2()?;
    let (e, two_i, h2) = gate_up.dims3()?;
    let (e2, h3, i) = down.dims3()?;
    let capacity = alignment.sorted_slots.dim(0)?;
    let dtype = x.dtype();
    if h2 != h
        || h3 != h
        || two_i != 2 * i
        || e2 != e
        || alignment.counts.dim(0)? != e
        || gate_up.dtype() != dtype
        || down.dtype() != dtype
        || top_k == 0
    {
        return Err(Error::Input(format!(
            "expert FFN: x {:?} {dtype:?}, gate_up {:?} {:?}, down {:?} {:?} and {} experts \
             aligned do not fit",
            x.dims(),
            gate_up.dims(),
            gate_up.dtype(),
            down.dims(),
            down.dtype(),
            alignment.counts.dim(0)?
        )));
    }
    let dev = cuda_device(x)?;
    let act = zeros::<f32>(&dev, capacity * i)?;
    let dims = FfnDims {
        k: top_k as i32,
        hidden: h as i32,
        inter: i as i32,
        experts: e as u32,
    };
    let tensors = FfnTensors {
        x,
        gate_up,
        down,
        alignment,
    };
    let y = match dtype {
        DType::F32 => launch_ffn::<f32>("f32", &tensors, &act, &dims, capacity, &dev)?,
        DType::BF16 => launch_ffn::<bf16>("bf16", &tensors, &act, &dims, capacity, &dev)?,
        DType::F16 => launch_ffn::<f16>("f16", &tensors, &act, &dims, capacity, &dev)?,
        other => return Err(unsupported("expert weights", other)),
    };
    Ok(y)
}

struct FfnDims {
    k: i32,
    hidden: i32,
    inter: i32,
    experts: u32,
}

struct FfnTensors<'a> {
    x: &'a Tensor,
    gate_up: &'a Tensor,
    down: &'a Tensor,
    alignment: &'a Alignment,
}

/// Warps per block of the FFN kernels: one output row each.
const FFN_WARPS: u32 = 8;

fn launch_ffn<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
    suffix: &str,
    t: &FfnTensors<'_>,
    act: &CudaSlice<f32>,
    d: &FfnDims,
    capacity: usize,
    dev: &CudaDevice,
) -> Result<Tensor> {
    let y = zeros::<T>(dev, capacity * d.hidden as usize)?;
    let a = t.alignment;
    let config = |rows: i32| LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(FFN_WARPS), d.experts, 1),
        block_dim: (FFN_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    with_view::<u32, _>(&a.counts, |counts| {
        with_view::<u32, _>(&a.offsets, |offsets| {
            with_view::<u32, _>(&a.sorted_slots, |sorted| {
                with_view::<T, _>(t.x, |x| {
                    with_view::<T, _>(t.gate_up, |w| {
                        let name = format!("moe_ffn_gate_up_{suffix}");
                        let func =
                            dev.get_or_load_custom_func(&name, "moe_expert_ffn", ptx::EXPERT_FFN)?;
                        let mut b = func.builder();
                        b.arg(&x)
                            .arg(&w)
                            .arg(&counts)
                            .arg(&offsets)
                            .arg(&sorted)
                            .arg(act)
                            .arg(&d.k)
                            .arg(&d.hidden)
                            .arg(&d.inter);
                        // SAFETY: the alignment's rows index act (capacity x I) and its slots
                        // index x (tokens x H) through slot / k; shapes checked by the caller.
                        unsafe { b.launch(config(d.inter)) }.w()?;
                        Ok(())
                    })
                })?;
                with_view::<T, _>(t.down, |w| {
                    let name = format!("moe_ffn_down_{suffix}");
                    let func =
                        dev.get_or_load_custom_func(&name, "moe_expert_ffn", ptx::EXPERT_FFN)?;
                    let mut b = func.builder();
                    b.arg(act)
                        .arg(&w)
                        .arg(&counts)
                        .arg(&offsets)
                        .arg(&y)
                        .arg(&d.hidden)
                        .arg(&d.inter);
                    // SAFETY: as above; y is capacity x H.
                    unsafe { b.launch(config(d.hidden)) }.w()?;
                    Ok(())
                })
            })
        })
    })?;
    Ok(tensor(y, dev, (capacity, d.hidden as usize)))
}

/// out[t] = Σ_j weights[t, j] · y[slot_position[t k + j]], accumulated in f32.
/// y: (rows, hidden) of f32/bf16/f16 in aligned order; weights: (tokens, k) f32;
/// slot_position: (tokens k) u32 -> (tokens, hidden) of y's dtype.
pub fn combine(y: &Tensor, weights: &Tensor, slot_position: &Tensor) -> Result<Tensor> {
    let (rows, hidden) = y.dims2()?;
    let (tokens, k) = weights.dims2()?;
    if weights.dtype() != DType::F32
        || slot_position.dtype() != DType::U32
        || slot_position.dims() != [tokens * k]
        || (tokens * k > 0 && rows == 0)
    {
        return Err(Error::Input(format!(
            "combine: weights {:?} {:?} and positions {:?} {:?} do not fit rows of {:?}",
            weights.dtype(),
            weights.dims(),
            slot_position.dtype(),
            slot_position.dims(),
            y.dims()
        )));
    }
    let dev = cuda_device(y)?;
    let (n_tokens, n_k, n_hidden) = (tokens as i32, k as i32, hidden as i32);
    let cfg = LaunchConfig {
        grid_dim: ((hidden as u32).div_ceil(THREADS), tokens as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    fn run<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        name: &str,
        y: &Tensor,
        weights: &Tensor,
        positions: &Tensor,
        dev: &CudaDevice,
        cfg: LaunchConfig,
        dims: (i32, i32, i32),
    ) -> Result<Tensor> {
        let (tokens, k, hidden) = dims;
        let out = zeros::<T>(dev, (tokens * hidden) as usize)?;
        if tokens > 0 && hidden > 0 {
            with_view::<T, _>(y, |y| {
                with_view::<f32, _>(weights, |w| {
                    with_view::<u32, _>(positions, |p| {
                        let func =
                            dev.get_or_load_custom_func(name, "moe_combine", ptx::COMBINE)?;
                        let mut b = func.builder();
                        b.arg(&y)
                            .arg(&w)
                            .arg(&p)
                            .arg(&out)
                            .arg(&tokens)
                            .arg(&k)
                            .arg(&hidden);
                        // SAFETY: positions index rows of y (the alignment made both); the
                        // output is tokens x hidden as allocated.
                        unsafe { b.launch(cfg) }.w()?;
                        Ok(())
                    })
                })
            })?;
        }
        Ok(tensor(out, dev, (tokens as usize, hidden as usize)))
    }
    let dims = (n_tokens, n_k, n_hidden);
    match y.dtype() {
        DType::F32 => run::<f32>(
            "moe_combine_f32",
            y,
            weights,
            slot_position,
            &dev,
            cfg,
            dims,
        ),
        DType::BF16 => run::<bf16>(
            "moe_combine_bf16",
            y,
            weights,
            slot_position,
            &dev,
            cfg,
            dims,
        ),
        DType::F16 => run::<f16>(
            "moe_combine_f16",
            y,
            weights,
            slot_position,
            &dev,
            cfg,
            dims,
        ),
        other => Err(unsupported("expert outputs", other)),
    }
}

/// Zeroed device memory for `n` values; one at least, since an empty allocation is an error
/// to the driver (tensors over it keep their own, possibly empty, shape).
fn zeros<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    n: usize,
) -> Result<CudaSlice<T>> {
    Ok(dev.alloc_zeros::<T>(n.max(1))?)
}

fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(dev) => Ok(dev.clone()),
        other => Err(Error::Input(format!(
            "a CUDA kernel was given a tensor on {other:?}"
        ))),
    }
}

/// Calls `f` with the device memory of contiguous `t`, viewed as T.
fn with_view<T: CudaDType, R>(
    t: &Tensor,
    f: impl FnOnce(CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        return Err(Error::Input(
            "a CUDA kernel was given a tensor off the GPU".into(),
        ));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(Error::Input(format!(
            "a CUDA kernel needs contiguous input, got strides {:?}",
            layout.stride()
        )));
    };
    f(s.as_cuda_slice::<T>()?.slice(start..end))
}

fn tensor<T: CudaDType>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<candle_core::Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

fn unsupported(what: &str, dtype: DType) -> Error {
    Error::Input(format!(
        "{what} in {dtype:?}: the CUDA kernels take f32, bf16 or f16"
    ))
}

/// Every kernel against its CPU twin on the edge cases. Without a GPU each test says it skipped
/// and passes: CI compiles them (feature `cuda`), the GPU machine runs them.
#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::moe::{RouterConfig, Routing};
    use crate::ops::cpu::ExpertGroups;

    fn gpu() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(dev) => Some(dev),
            Err(e) => {
                let why = e.to_string();
                eprintln!(
                    "skipping: no CUDA device ({})",
                    why.lines().next().unwrap_or("")
                );
                None
            }
        }
    }

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

    /// Every value within `tol`, relative to 1 + |want|.
    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what} {i}: {g} vs {w}"
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
                    let logits =
                        Tensor::from_vec(random(tokens * e, 4.0, i as u64), (tokens, e), &dev)
                            .unwrap()
                            .to_dtype(dtype)
                            .unwrap();
                    // The CPU routes the same (rounded) logits.
                    let host: Vec<f32> = to_host(&logits.to_dtype(DType::F32).unwrap());
                    let cfg = RouterConfig {
                        top_k: k,
                        norm_topk_prob: renormalise,
                    };
                    let cpu = Routing::from_slice(&host, e, cfg).unwrap();
                    let (experts, weights) =
                        route(&logits, k, Scoring::Softmax, renormalise, 1.0).unwrap();
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

    #[test]
    fn routing_ties_go_to_the_lower_expert_index() {
        let Some(dev) = gpu() else { return };
        let logits = Tensor::new(&[[1f32, 5.0, 5.0, 5.0, 0.0], [0.5; 5]], &dev).unwrap();
        let (experts, _) = route(&logits, 2, Scoring::Softmax, false, 1.0).unwrap();
        assert_eq!(to_host::<u32>(&experts), [1, 2, 0, 1]);
        // Exact ties in bf16, wider than a warp.
        let flat = Tensor::ones((2, 200), DType::BF16, &dev).unwrap();
        let (experts, weights) = route(&flat, 3, Scoring::Sigmoid, true, 1.0).unwrap();
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
        let (experts, weights) = route(&logits, k, Scoring::Sigmoid, true, scale).unwrap();
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
            (8, 2, Vec::new()),                 // no tokens
        ];
        let many: Vec<u32> = (0..4096 * 8).map(|_| rng.random_range(0..128)).collect();
        cases.push((128, 8, many));
        for (e, k, ids) in cases {
            for tile in [1, 16, 64] {
                let tokens = ids.len() / k;
                let t = Tensor::from_vec(ids.clone(), (tokens, k), &dev).unwrap();
                let a = align(&t, e, tile).unwrap();
                let groups = ExpertGroups::new(&ids, &vec![0.0; ids.len()], e, k);
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
                let tile_expert = to_host::<u32>(&a.tile_expert);
                let position = to_host::<u32>(&a.slot_position);
                let sorted = to_host::<u32>(&a.sorted_slots);
                let mut want_sorted = vec![ids.len() as u32; total];
                for (slot, &s) in groups.assignment_slot.iter().enumerate() {
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
            let mut want = vec![0f32; tokens * hidden];
            for t in 0..tokens {
                for j in 0..k {
                    let (p, wt) = (pos[t * k + j] as usize, w[t * k + j]);
                    for h in 0..hidden {
                        want[t * hidden + h] += wt * y[p * hidden + h];
                    }
                }
            }
            for dtype in [DType::F32, DType::BF16] {
                let yt = Tensor::from_vec(y.clone(), (rows, hidden), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let wt = Tensor::from_vec(w.clone(), (tokens, k), &dev).unwrap();
                let pt = Tensor::from_vec(pos.clone(), slots, &dev).unwrap();
                let out = combine(&yt, &wt, &pt).unwrap();
                assert_eq!(out.dtype(), dtype);
                let got = to_host::<f32>(&out.to_dtype(DType::F32).unwrap());
                // bf16 inputs and output: a few of its 8-bit mantissas over k terms.
                let tol = if dtype == DType::BF16 { 0.05 } else { 1e-5 };
                assert_close(&got, &want, tol, &format!("{dtype:?}"));
            }
        }
    }

    #[test]
    fn decode_expert_ffn_matches_the_cpu_grouped_ffn() {
        let Some(dev) = gpu() else { return };
        use crate::ops::cpu::{grouped_ffn_weights, ExpertWeights, WeightSlice};
        // (tokens, E, k, H, I): one token; a few sharing experts (counts past the kernel's 4
        // tokens at a time); sizes off the warp grid.
        for (case, &(tokens, e, k, h, i)) in
            [(1, 8, 2, 64, 96), (6, 4, 2, 33, 40), (12, 16, 4, 128, 72)]
                .iter()
                .enumerate()
        {
            let mut rng = ChaCha8Rng::seed_from_u64(case as u64);
            let x = random(tokens * h, 1.0, 10 + case as u64);
            let gate_up = random(e * 2 * i * h, 0.2, 20 + case as u64);
            let down = random(e * h * i, 0.2, 30 + case as u64);
            let mut ids = Vec::new();
            for _ in 0..tokens {
                let mut row: Vec<u32> = (0..e as u32).collect();
                for j in 0..k {
                    let pick = rng.random_range(j..e);
                    row.swap(j, pick);
                }
                ids.extend_from_slice(&row[..k]);
            }
            let weights = random(tokens * k, 1.0, 40 + case as u64);
            let groups = ExpertGroups::new(&ids, &weights, e, k);
            let mut want = vec![0f32; tokens * h];
            let w = ExpertWeights {
                gate_up: WeightSlice::F32(&gate_up),
                down: WeightSlice::F32(&down),
                hidden: h,
                intermediate: i,
            };
            grouped_ffn_weights(&x, &groups, &w, &mut want).unwrap();
            for dtype in [DType::F32, DType::BF16] {
                let on_gpu = |v: &[f32], shape: &[usize]| {
                    Tensor::from_vec(v.to_vec(), shape, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let ids_t = Tensor::from_vec(ids.clone(), (tokens, k), &dev).unwrap();
                let a = align(&ids_t, e, 16).unwrap();
                let y = expert_ffn(
                    &on_gpu(&x, &[tokens, h]),
                    &on_gpu(&gate_up, &[e, 2 * i, h]),
                    &on_gpu(&down, &[e, h, i]),
                    &a,
                    k,
                )
                .unwrap();
                let wt = Tensor::from_vec(weights.clone(), (tokens, k), &dev).unwrap();
                let out = combine(&y, &wt, &a.slot_position).unwrap();
                let got = to_host::<f32>(&out.to_dtype(DType::F32).unwrap());
                let tol = if dtype == DType::BF16 { 0.05 } else { 1e-4 };
                assert_close(&got, &want, tol, &format!("{dtype:?} case {case}"));
            }
        }
    }
}
