// Fused routing, one warp per token: scores over the token's E router logits (softmax, or
// sigmoid), the top k of them (ties to the lower expert index, as the host router in
// src/ops/reference/route.rs), optional renormalisation of the chosen weights, then a scale.
//
// logits:  (tokens, E) of T
// experts: (tokens, k) u32, best first
// weights: (tokens, k) f32
// Launch: blocks of ROUTE_WARPS * 32 threads, ceil(tokens / ROUTE_WARPS) blocks.
// The host checks E <= 32 * MAX_PER_LANE and 1 <= k <= min(E, 32).

#include <stdint.h>

#include "convert.cuh"

#define MAX_PER_LANE 16  // E up to 512: each lane keeps experts lane, lane + 32, ... in registers
#define FULL 0xffffffffu

// A candidate for the next choice. `key` orders candidates (NaN scores rank as -inf, so that the
// order is total and the reduction gives one answer in any order); `idx` breaks ties downwards;
// idx == E means "none yet" and loses to any real expert.
struct Candidate {
  float key;
  float value;
  int idx;
};

__device__ __forceinline__ bool beats(const Candidate& a, const Candidate& b, int E) {
  if (b.idx == E) return a.idx != E;
  if (a.idx == E) return false;
  return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}

template <typename T>
__device__ void route(const T* __restrict__ logits, uint32_t* __restrict__ experts,
                      float* __restrict__ weights, int tokens, int E, int k, int sigmoid,
                      int renormalise, float scale) {
  const int lane = threadIdx.x & 31;
  const int token = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (token >= tokens) return;  // whole warps leave together
  const T* row = logits + (size_t)token * E;

  float s[MAX_PER_LANE];
  float local_max = -INFINITY;
#pragma unroll
  for (int j = 0; j < MAX_PER_LANE; ++j) {
    const int e = lane + 32 * j;
    s[j] = e < E ? to_f32(row[e]) : -INFINITY;
    local_max = fmaxf(local_max, s[j]);
  }
  if (sigmoid) {
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) s[j] = 1.0f / (1.0f + __expf(-s[j]));
  } else {
    for (int o = 16; o > 0; o >>= 1) local_max = fmaxf(local_max, __shfl_xor_sync(FULL, local_max, o));
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      s[j] = lane + 32 * j < E ? expf(s[j] - local_max) : 0.0f;
      sum += s[j];
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(FULL, sum, o);
    const float inv = 1.0f / sum;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) s[j] *= inv;
  }

  // Lane c ends up holding choice c.
  uint32_t chosen = 0;  // bit j: expert lane + 32 j is taken
  int my_expert = 0;
  float my_weight = 0.0f;
  for (int c = 0; c < k; ++c) {
    Candidate best = {-INFINITY, 0.0f, E};
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      const int e = lane + 32 * j;
      if (e < E && !(chosen & (1u << j))) {
        const Candidate mine = {isnan(s[j]) ? -INFINITY : s[j], s[j], e};
        if (beats(mine, best, E)) best = mine;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const Candidate other = {__shfl_xor_sync(FULL, best.key, o), __shfl_xor_sync(FULL, best.value, o),
                               __shfl_xor_sync(FULL, best.idx, o)};
      if (beats(other, best, E)) best = other;
    }
    if ((best.idx & 31) == lane) chosen |= 1u << (best.idx >> 5);
    if (lane == c) {
      my_expert = best.idx;
      my_weight = best.value;
    }
  }
  float total = lane < k ? my_weight : 0.0f;
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(FULL, total, o);
  if (lane < k) {
    // HF's DeepSeek-V3 adds 1e-20 so that sigmoid weights that all underflow give 0, not NaN;
    // a softmax's chosen sum is at least 1/E, which the epsilon cannot move.
    const float w = renormalise ? my_weight / (total + 1e-20f) : my_weight;
    experts[(size_t)token * k + lane] = (uint32_t)my_expert;
    weights[(size_t)token * k + lane] = w * scale;
  }
}

#define ROUTE(NAME, T)                                                                          \
  extern "C" __global__ void NAME(const T* logits, uint32_t* experts, float* weights, int tokens, \
                                  int E, int k, int sigmoid, int renormalise, float scale) {      \
    route<T>(logits, experts, weights, tokens, E, k, sigmoid, renormalise, scale);                \
  }

ROUTE(moe_route_f32, float)
ROUTE(moe_route_bf16, __nv_bfloat16)
ROUTE(moe_route_f16, __half)
