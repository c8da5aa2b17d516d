//! Alignment (kernels/moe_align.cu): the routing's slots sorted by expert and padded to tiles.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{DType, Tensor};

use super::{cuda_device, output, ptx, tensor, with_view, THREADS};
use crate::error::{Error, Result};

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
    /// (E): the experts with at least one slot, ascending; entries from `num_active` on are
    /// unused.
    pub active_experts: Tensor,
    /// (1): experts with at least one slot.
    pub num_active: Tensor,
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
    let counts = output::<u32>(&dev, num_experts)?;
    let offsets = output::<u32>(&dev, num_experts + 1)?;
    let sorted_slots = output::<u32>(&dev, capacity)?;
    let slot_position = output::<u32>(&dev, slots)?;
    let tile_expert = output::<u32>(&dev, capacity / tile)?;
    let num_tiles = output::<u32>(&dev, 1)?;
    let active_experts = output::<u32>(&dev, num_experts)?;
    let num_active = output::<u32>(&dev, 1)?;
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
            .arg(&num_tiles)
            .arg(&active_experts)
            .arg(&num_active)
            .arg(&slot_position);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 4 * num_experts as u32,
        };
        // SAFETY: sizes as allocated above; the kernel drops ids of num_experts or more (and
        // marks their positions).
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
        // SAFETY: as above; block e writes only the rows of its own padded run, all of them.
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
        active_experts: tensor(active_experts, &dev, num_experts),
        num_active: tensor(num_active, &dev, 1),
        tile,
    })
}
