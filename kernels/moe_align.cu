// Alignment: the routing's slots (slot = token * k + choice) in expert order, each expert's run
// padded to a whole number of GEMM tiles, so that a grouped GEMM can give every tile of rows one
// expert. The order within an expert is the slots' own order (stable), as the CPU's counting
// sort (HostDispatch in src/ops/reference/dispatch.rs) makes it, so both sides see one layout.
//
// 1. moe_align_offsets, one block of up to 1024 threads, E * 4 bytes of shared memory:
//    counts[E], padded offsets[E + 1] (offsets[e + 1] - offsets[e] = counts[e] rounded up to
//    `tile`), tile_expert[offsets[E] / tile], num_tiles[1], and the experts with at least one
//    slot, ascending: active_experts[num_active[0]] (grids of the decode FFN run over these).
// 2. moe_align_scatter, E blocks of a multiple of 32 threads (up to 1024): block e writes its slots to
//    sorted_slots[offsets[e] ..] in slot order and fills the rest of its run with the sentinel
//    `slots` (no slot); slot_position[s] is where slot s landed.
// Expert ids of E or more (the router kernel makes none) are dropped: such a slot lands nowhere,
// and moe_align_offsets marks its slot_position with 0xffffffff (combine skips it).
// Every output is written in full up to its used length (offsets[E] rows of sorted_slots,
// num_tiles of tile_expert, num_active of active_experts), so the host allocates them unfilled.

#include <stdint.h>

#define FULL 0xffffffffu

extern "C" __global__ void moe_align_offsets(const uint32_t* __restrict__ experts, int slots, int E,
                                             int tile, uint32_t* __restrict__ counts,
                                             uint32_t* __restrict__ offsets,
                                             uint32_t* __restrict__ tile_expert,
                                             uint32_t* __restrict__ num_tiles,
                                             uint32_t* __restrict__ active_experts,
                                             uint32_t* __restrict__ num_active,
                                             uint32_t* __restrict__ slot_position) {
  extern __shared__ uint32_t per_expert[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) per_expert[e] = 0;
  __syncthreads();
  for (int s = threadIdx.x; s < slots; s += blockDim.x) {
    const uint32_t e = experts[s];
    if (e < (uint32_t)E)
      atomicAdd(&per_expert[e], 1u);
    else
      slot_position[s] = 0xffffffffu;  // dropped: no scatter block writes it
  }
  __syncthreads();
  // E is at most a few hundred: one thread's running sum costs less than a block scan's barriers.
  if (threadIdx.x == 0) {
    uint32_t at = 0, active = 0;
    for (int e = 0; e < E; ++e) {
      const uint32_t c = per_expert[e];
      counts[e] = c;
      if (c > 0) active_experts[active++] = e;
      offsets[e] = at;
      per_expert[e] = at;  // now the padded start, for the tile map below
      at += (c + tile - 1) / tile * tile;
    }
    offsets[E] = at;
    num_tiles[0] = at / tile;
    num_active[0] = active;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    const uint32_t start = per_expert[e] / tile;
    const uint32_t end = (e + 1 < E ? per_expert[e + 1] : offsets[E]) / tile;
    for (uint32_t t = start; t < end; ++t) tile_expert[t] = e;
  }
}

extern "C" __global__ void moe_align_scatter(const uint32_t* __restrict__ experts, int slots,
                                             const uint32_t* __restrict__ offsets,
                                             uint32_t* __restrict__ sorted_slots,
                                             uint32_t* __restrict__ slot_position) {
  __shared__ uint32_t warp_count[32];
  const uint32_t e = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  uint32_t next = offsets[e];
  // Every thread runs every chunk (the bound is uniform), so full-warp ballots are safe.
  for (int chunk = 0; chunk < slots; chunk += blockDim.x) {
    const int s = chunk + threadIdx.x;
    const bool mine = s < slots && experts[s] == e;
    const uint32_t ballot = __ballot_sync(FULL, mine);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    uint32_t before = 0, total = 0;
    for (int w = 0; w < warps; ++w) {
      before += w < warp ? warp_count[w] : 0;
      total += warp_count[w];
    }
    if (mine) {
      const uint32_t pos = next + before + __popc(ballot & ((1u << lane) - 1));
      sorted_slots[pos] = (uint32_t)s;
      slot_position[s] = pos;
    }
    next += total;
    __syncthreads();  // warp_count is rewritten by the next chunk
  }
  for (uint32_t pos = next + threadIdx.x; pos < offsets[e + 1]; pos += blockDim.x)
    sorted_slots[pos] = (uint32_t)slots;
}
