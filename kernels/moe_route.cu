// Fused routing, one warp per token: scores over the token's E router logits (softmax, or
// sigmoid), the top k of them (ties to the lower expert index, as the host router in
// src/ops/reference/route.rs), optional renormalisation of the chosen weights, then a scale.
// DeepSeek-V3's choice rules on top: a per-expert selection bias added to the scores that
// choose (never to the weights), and a group limit: the experts form G equal groups, each
// ranked by the sum of its two best biased scores, and only the best `keep` groups' experts
// may be chosen (the others' keys are -inf, as HF 5's masked_fill).
//
// logits:  (tokens, E) of T
// bias:    (E) f32, read when has_bias
// experts: (tokens, k) u32, best first
// weights: (tokens, k) f32
// Launch: blocks of ROUTE_WARPS * 32 threads, ceil(tokens / ROUTE_WARPS) blocks.
// The host checks E <= 32 * MAX_PER_LANE and 1 <= k <= min(E, 32); with groups (G > 1),
// G <= 32, G divides E and 1 <= keep <= G.

#include <stdint.h>

#include "convert.cuh"

#define MAX_PER_LANE 16  // E up to 512: each lane keeps experts lane, lane + 32, ... in registers
#define FULL 0xffffffffu
#define ROUTE_WARPS 8    // warps per block, as src/ops/cuda/route.rs launches

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

// The best of each lane's `best` over the warp, given to every lane.
__device__ __forceinline__ Candidate warp_best(Candidate best, int E) {
  for (int o = 16; o > 0; o >>= 1) {
    const Candidate other = {__shfl_xor_sync(FULL, best.key, o), __shfl_xor_sync(FULL, best.value, o),
                             __shfl_xor_sync(FULL, best.idx, o)};
    if (beats(other, best, E)) best = other;
  }
  return best;
}

// Bit g set for each of the `keep` best of G groups, ranked by the sum of their two best keys
// (NaN as -inf; a group of one expert by that one). `row` holds the warp's E keys.
__device__ uint32_t kept_groups(const float* row, int E, int G, int keep) {
  const int lane = threadIdx.x & 31;
  const int size = E / G;
  Candidate mine = {-INFINITY, 0.0f, G};  // idx G: not a group (lanes >= G)
  if (lane < G) {
    float first = -INFINITY, second = -INFINITY;
    int first_at = -1;
    for (int i = 0; i < size; ++i) {
      const float v = isnan(row[lane * size + i]) ? -INFINITY : row[lane * size + i];
      if (first_at < 0 || v > first) {
        second = first_at < 0 ? second : first;
        first = v;
        first_at = i;
      } else if (v > second) {
        second = v;
      }
    }
    const float score = first + (size > 1 ? second : 0.0f);
    mine = {score, score, lane};
  }
  uint32_t kept = 0;
  for (int c = 0; c < keep; ++c) {
    Candidate cand = (kept >> lane) & 1u ? Candidate{-INFINITY, 0.0f, G} : mine;
    const Candidate best = warp_best(cand, G);
    kept |= 1u << best.idx;
  }
  return kept;
}

template <typename T>
__device__ void route(const T* __restrict__ logits, const float* __restrict__ bias,
                      uint32_t* __restrict__ experts, float* __restrict__ weights, int tokens, int E,
                      int k, int sigmoid, int renormalise, float scale, int has_bias, int groups,
                      int keep) {
  __shared__ float keys[ROUTE_WARPS][32 * MAX_PER_LANE];
  // The shared rows are sized for ROUTE_WARPS warps: a launch with more is a bug, stopped here
  // rather than writing past them.
  if (blockDim.x > ROUTE_WARPS * 32) __trap();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int token = blockIdx.x * (blockDim.x >> 5) + warp;
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

  // What chooses: the score plus the selection bias, NaN as -inf; experts of groups not kept
  // never chosen.
  float key[MAX_PER_LANE];
#pragma unroll
  for (int j = 0; j < MAX_PER_LANE; ++j) {
    const int e = lane + 32 * j;
    const float v = has_bias && e < E ? s[j] + bias[e] : s[j];
    key[j] = isnan(v) ? -INFINITY : v;
  }
  if (groups > 1) {
    float* shared = keys[warp];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      const int e = lane + 32 * j;
      if (e < E) shared[e] = has_bias ? s[j] + bias[e] : s[j];
    }
    __syncwarp();
    const uint32_t kept = kept_groups(shared, E, groups, keep);
    const int size = E / groups;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      const int e = lane + 32 * j;
      if (e < E && !((kept >> (e / size)) & 1u)) key[j] = -INFINITY;
    }
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
        const Candidate mine = {key[j], s[j], e};
        if (beats(mine, best, E)) best = mine;
      }
    }
    best = warp_best(best, E);
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

#define ROUTE(NAME, T)                                                                           \
  extern "C" __global__ void NAME(const T* logits, const float* bias, uint32_t* experts,          \
                                  float* weights, int tokens, int E, int k, int sigmoid,          \
                                  int renormalise, float scale, int has_bias, int groups,         \
                                  int keep) {                                                     \
    route<T>(logits, bias, experts, weights, tokens, E, k, sigmoid, renormalise, scale, has_bias, \
             groups, keep);                                                                       \
  }

ROUTE(moe_route_f32, float)
ROUTE(moe_route_bf16, __nv_bfloat16)
ROUTE(moe_route_f16, __half)
