//! The routed experts' FFN on aligned rows: kernels/moe_expert_ffn.cu streams each weight row
//! once for few tokens per expert (decode); kernels/moe_grouped_gemm.cu runs tiles of many
//! tokens per expert on tensor cores (prefill). Both write one output row per aligned slot.

use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{DType, Tensor};
use half::{bf16, f16};

use super::{cuda_device, operand, output, ptx, tensor, unsupported, Alignment, Operand};
use crate::error::{Error, Result};

/// Rows per tile of the grouped GEMM (BM in moe_grouped_gemm.cu): the alignment's tile for
/// [`FfnPath::Gemm`].
pub const GEMM_TILE: usize = 64;
/// Output columns per GEMM block (BN) and threads per GEMM block.
const GEMM_COLUMNS: usize = 64;
const GEMM_THREADS: u32 = 128;
/// Warps per block of the decode kernels: one output row each.
const DECODE_WARPS: u32 = 8;
/// From this many slots per expert on average, the GEMM's tiles are full enough to beat
/// streaming: below it a 64-row tile is mostly padding and the step is bound by reading the
/// weights, which the decode kernel does at full width. A first guess, to be measured on a GPU.
const GEMM_MIN_SLOTS_PER_EXPERT: usize = 8;

/// Which kernels run the experts' FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnPath {
    /// A warp per output row reads each weight row once for up to 4 of the expert's tokens;
    /// f32 accumulation, the activation kept in f32. Any dtype, any sizes, any tile.
    Decode,
    /// Tensor-core tiles (WMMA, f32 accumulation), the activation rounded to the weights'
    /// dtype between the two GEMMs as a bf16/f16 model does. bf16/f16, hidden and intermediate
    /// multiples of 8, 16-byte aligned tensors, an alignment to [`GEMM_TILE`].
    Gemm,
}

impl FfnPath {
    /// The path for `slots` (tokens x k) over the experts of `gate_up: (E, 2I, H)` with input
    /// `x`: the GEMM where it applies and tiles would be full enough, else decode.
    pub fn choose(slots: usize, x: &Tensor, gate_up: &Tensor, down: &Tensor) -> Result<FfnPath> {
        let e = gate_up.dim(0)?;
        let busy = slots >= GEMM_MIN_SLOTS_PER_EXPERT * e;
        Ok(if busy && gemm_unsupported(x, gate_up, down)?.is_none() {
            FfnPath::Gemm
        } else {
            FfnPath::Decode
        })
    }

    /// The alignment tile this path reads.
    pub fn tile(self) -> usize {
        match self {
            FfnPath::Decode => 1,
            FfnPath::Gemm => GEMM_TILE,
        }
    }
}

/// Why the GEMM cannot take these tensors, if it cannot.
fn gemm_unsupported(x: &Tensor, gate_up: &Tensor, down: &Tensor) -> Result<Option<String>> {
    if !matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Ok(Some(format!("{:?} (it takes bf16 or f16)", x.dtype())));
    }
    let (h, i) = (x.dim(1)?, down.dim(2)?);
    if !h.is_multiple_of(8) || !i.is_multiple_of(8) {
        return Ok(Some(format!(
            "hidden {h} / intermediate {i} (both must be multiples of 8)"
        )));
    }
    for t in [x, gate_up, down] {
        if !operand(t)?.aligned16() {
            return Ok(Some("a tensor that does not start on 16 bytes".into()));
        }
    }
    Ok(None)
}

/// The routed experts' FFN over `alignment`'s rows by `path`. x: (tokens, H); gate_up:
/// (E, 2I, H), gate rows then up rows; down: (E, H, I), all of one dtype (f32/bf16/f16) ->
/// (capacity, H) of it, one row per aligned slot, for `combine` (padding rows: zero on the
/// GEMM path, unwritten on the decode path; combine reads neither).
pub fn expert_ffn(
    x: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    alignment: &Alignment,
    top_k: usize,
    path: FfnPath,
) -> Result<Tensor> {
    let (tokens, h) = x.dims2()?;
    let (e, two_i, h2) = gate_up.dims3()?;
    let (e2, h3, i) = down.dims3()?;
    let capacity = alignment.sorted_slots.dim(0)?;
    let dtype = x.dtype();
    if h2 != h
        || h3 != h
        || two_i != 2 * i
        || e2 != e
        || alignment.counts.dim(0)? != e
        || alignment.slot_position.dim(0)? != tokens * top_k
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
    if path == FfnPath::Gemm {
        if alignment.tile != GEMM_TILE {
            return Err(Error::Input(format!(
                "the grouped GEMM reads tiles of {GEMM_TILE} rows, the alignment has {}",
                alignment.tile
            )));
        }
        if let Some(why) = gemm_unsupported(x, gate_up, down)? {
            return Err(Error::Input(format!("the grouped GEMM cannot take {why}")));
        }
        if capacity / GEMM_TILE > 65535 {
            return Err(Error::Input(format!(
                "{capacity} aligned rows are more tiles than one launch's grid holds"
            )));
        }
    }
    let dev = cuda_device(x)?;
    let ops = Operands {
        x: operand(x)?,
        gate_up: operand(gate_up)?,
        down: operand(down)?,
        counts: operand(&alignment.counts)?,
        offsets: operand(&alignment.offsets)?,
        sorted: operand(&alignment.sorted_slots)?,
        tile_expert: operand(&alignment.tile_expert)?,
        num_tiles: operand(&alignment.num_tiles)?,
        active: operand(&alignment.active_experts)?,
        num_active: operand(&alignment.num_active)?,
    };
    let d = Dims {
        k: top_k as i32,
        slots: (tokens * top_k) as i32,
        hidden: h as i32,
        inter: i as i32,
        experts: e,
        capacity,
    };
    let y = match (path, dtype) {
        (FfnPath::Decode, DType::F32) => decode::<f32>("f32", &ops, &d, &dev)?,
        (FfnPath::Decode, DType::BF16) => decode::<bf16>("bf16", &ops, &d, &dev)?,
        (FfnPath::Decode, DType::F16) => decode::<f16>("f16", &ops, &d, &dev)?,
        (FfnPath::Gemm, DType::BF16) => gemm::<bf16>("bf16", &ops, &d, &dev)?,
        (FfnPath::Gemm, DType::F16) => gemm::<f16>("f16", &ops, &d, &dev)?,
        (_, other) => return Err(unsupported("expert weights", other)),
    };
    Ok(y)
}

struct Dims {
    k: i32,
    slots: i32,
    hidden: i32,
    inter: i32,
    experts: usize,
    capacity: usize,
}

/// Every tensor a launch reads, borrowed once.
struct Operands<'a> {
    x: Operand<'a>,
    gate_up: Operand<'a>,
    down: Operand<'a>,
    counts: Operand<'a>,
    offsets: Operand<'a>,
    sorted: Operand<'a>,
    tile_expert: Operand<'a>,
    num_tiles: Operand<'a>,
    active: Operand<'a>,
    num_active: Operand<'a>,
}

fn decode<T: CudaDType + DeviceRepr>(
    suffix: &str,
    o: &Operands<'_>,
    d: &Dims,
    dev: &CudaDevice,
) -> Result<Tensor> {
    // Rows of experts with slots are written; the rest (padding) nobody reads.
    let act = output::<f32>(dev, d.capacity * d.inter as usize)?;
    let y = output::<T>(dev, d.capacity * d.hidden as usize)?;
    let vec = [&o.x, &o.gate_up, &o.down].iter().all(|t| t.aligned16())
        && d.hidden % 8 == 0
        && d.inter % 8 == 0;
    let vec = i32::from(vec);
    // Only experts with tokens get blocks: at most one per slot.
    let experts = d.experts.min(d.slots as usize).max(1) as u32;
    let config = |rows: i32| LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(DECODE_WARPS), experts, 1),
        block_dim: (DECODE_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (x, w) = (o.x.view::<T>()?, o.gate_up.view::<T>()?);
    let (counts, offsets) = (o.counts.view::<u32>()?, o.offsets.view::<u32>()?);
    let (sorted, active) = (o.sorted.view::<u32>()?, o.active.view::<u32>()?);
    let num_active = o.num_active.view::<u32>()?;
    let name = format!("moe_ffn_gate_up_{suffix}");
    let func = dev.get_or_load_custom_func(&name, "moe_expert_ffn", ptx::EXPERT_FFN)?;
    let mut b = func.builder();
    b.arg(&x)
        .arg(&w)
        .arg(&counts)
        .arg(&offsets)
        .arg(&sorted)
        .arg(&active)
        .arg(&num_active)
        .arg(&act)
        .arg(&d.k)
        .arg(&d.hidden)
        .arg(&d.inter)
        .arg(&vec);
    // SAFETY: the alignment's rows index act (capacity x I) and its slots index x (tokens x H)
    // through slot / k; shapes checked by the caller; vector loads only where `vec` found every
    // row 16-byte aligned.
    unsafe { b.launch(config(d.inter)) }.w()?;

    let w = o.down.view::<T>()?;
    let name = format!("moe_ffn_down_{suffix}");
    let func = dev.get_or_load_custom_func(&name, "moe_expert_ffn", ptx::EXPERT_FFN)?;
    let mut b = func.builder();
    b.arg(&act)
        .arg(&w)
        .arg(&counts)
        .arg(&offsets)
        .arg(&active)
        .arg(&num_active)
        .arg(&y)
        .arg(&d.hidden)
        .arg(&d.inter)
        .arg(&vec);
    // SAFETY: as above; y is capacity x H.
    unsafe { b.launch(config(d.hidden)) }.w()?;
    Ok(tensor(y, dev, (d.capacity, d.hidden as usize)))
}

fn gemm<T: CudaDType + DeviceRepr>(
    suffix: &str,
    o: &Operands<'_>,
    d: &Dims,
    dev: &CudaDevice,
) -> Result<Tensor> {
    // Every row of a tile in use is written, padding rows too; rows past them nobody reads.
    let act = output::<T>(dev, d.capacity * d.inter as usize)?;
    let y = output::<T>(dev, d.capacity * d.hidden as usize)?;
    let tiles = (d.capacity / GEMM_TILE).max(1) as u32;
    let config = |columns: i32| LaunchConfig {
        grid_dim: ((columns as usize).div_ceil(GEMM_COLUMNS) as u32, tiles, 1),
        block_dim: (GEMM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (x, w) = (o.x.view::<T>()?, o.gate_up.view::<T>()?);
    let (sorted, tile_expert) = (o.sorted.view::<u32>()?, o.tile_expert.view::<u32>()?);
    let num_tiles = o.num_tiles.view::<u32>()?;
    let name = format!("moe_gemm_gate_up_{suffix}");
    let func = dev.get_or_load_custom_func(&name, "moe_grouped_gemm", ptx::GROUPED_GEMM)?;
    let mut b = func.builder();
    b.arg(&x)
        .arg(&w)
        .arg(&sorted)
        .arg(&tile_expert)
        .arg(&num_tiles)
        .arg(&act)
        .arg(&d.k)
        .arg(&d.slots)
        .arg(&d.hidden)
        .arg(&d.inter);
    // SAFETY: tiles below num_tiles cover rows of act (capacity x I), each of one expert
    // (tile_expert < E); real slots index x (tokens x H) through slot / k, sentinels read
    // nothing; K = H is a multiple of 8 and every row 16-byte aligned (gemm_unsupported).
    unsafe { b.launch(config(d.inter)) }.w()?;

    let w = o.down.view::<T>()?;
    let name = format!("moe_gemm_down_{suffix}");
    let func = dev.get_or_load_custom_func(&name, "moe_grouped_gemm", ptx::GROUPED_GEMM)?;
    let mut b = func.builder();
    b.arg(&act)
        .arg(&w)
        .arg(&tile_expert)
        .arg(&num_tiles)
        .arg(&y)
        .arg(&d.inter)
        .arg(&d.hidden);
    // SAFETY: as above, with K = I and y capacity x H.
    unsafe { b.launch(config(d.hidden)) }.w()?;
    Ok(tensor(y, dev, (d.capacity, d.hidden as usize)))
}
