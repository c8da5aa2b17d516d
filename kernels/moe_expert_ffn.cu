// The routed experts' FFN for few tokens per expert (decode): each warp owns one output row of
// one expert and reads that weight row once for all of the expert's tokens (up to TOKENS at a
// time; more tokens reread it from cache), in the aligned order of moe_align.cu.
//
// 1. moe_ffn_gate_up_T: act[p, r] = silu(x_t · gate_e[r]) * (x_t · up_e[r]), f32, for every
//    aligned row p of expert e (token t = sorted_slots[p] / k). gate_up: (E, 2I, H), gate rows
//    then up rows. Grid (ceil(I / warps), E).
// 2. moe_ffn_down_T: y[p, r] = act[p] · down_e[r], written as T. down: (E, H, I).
//    Grid (ceil(H / warps), E).
// Padding rows (sentinel slots) are neither read nor written. Experts without tokens return at
// once. The prefill path (many tokens per expert) is a tensor-core GEMM over the same layout.

#include <stdint.h>

#include "convert.cuh"

#define FULL 0xffffffffu
#define TOKENS 4

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}

template <typename T>
__device__ void gate_up(const T* __restrict__ x, const T* __restrict__ w, const uint32_t* __restrict__ counts,
                        const uint32_t* __restrict__ offsets, const uint32_t* __restrict__ sorted_slots,
                        float* __restrict__ act, int k, int hidden, int inter) {
  const int e = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const uint32_t count = counts[e], first = offsets[e];
  if (count == 0 || r >= inter) return;
  const T* gate = w + ((size_t)e * 2 * inter + r) * hidden;
  const T* up = gate + (size_t)inter * hidden;
  for (uint32_t done = 0; done < count; done += TOKENS) {
    const int n = min((uint32_t)TOKENS, count - done);
    const T* xs[TOKENS];
    float g[TOKENS], u[TOKENS];
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) {
      const uint32_t slot = j < n ? sorted_slots[first + done + j] : 0;
      xs[j] = x + (size_t)(slot / k) * hidden;
      g[j] = u[j] = 0.0f;
    }
    for (int h = lane; h < hidden; h += 32) {
      const float wg = to_f32(gate[h]), wu = to_f32(up[h]);
#pragma unroll
      for (int j = 0; j < TOKENS; ++j) {
        if (j < n) {
          const float xv = to_f32(xs[j][h]);
          g[j] += wg * xv;
          u[j] += wu * xv;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) {
      const float gj = warp_sum(g[j]), uj = warp_sum(u[j]);
      if (lane == 0 && j < n) act[(size_t)(first + done + j) * inter + r] = gj / (1.0f + expf(-gj)) * uj;
    }
  }
}

template <typename T>
__device__ void down(const float* __restrict__ act, const T* __restrict__ w, const uint32_t* __restrict__ counts,
                     const uint32_t* __restrict__ offsets, T* __restrict__ y, int hidden, int inter) {
  const int e = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const uint32_t count = counts[e], first = offsets[e];
  if (count == 0 || r >= hidden) return;
  const T* row = w + ((size_t)e * hidden + r) * inter;
  for (uint32_t done = 0; done < count; done += TOKENS) {
    const int n = min((uint32_t)TOKENS, count - done);
    float acc[TOKENS];
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) acc[j] = 0.0f;
    for (int i = lane; i < inter; i += 32) {
      const float wv = to_f32(row[i]);
#pragma unroll
      for (int j = 0; j < TOKENS; ++j)
        if (j < n) acc[j] += wv * act[(size_t)(first + done + j) * inter + i];
    }
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) {
      const float v = warp_sum(acc[j]);
      if (lane == 0 && j < n) y[(size_t)(first + done + j) * hidden + r] = from_f32<T>(v);
    }
  }
}

#define FFN(SUFFIX, T)                                                                                    \
  extern "C" __global__ void moe_ffn_gate_up_##SUFFIX(const T* x, const T* w, const uint32_t* counts,     \
                                                       const uint32_t* offsets, const uint32_t* sorted,   \
                                                       float* act, int k, int hidden, int inter) {        \
    gate_up<T>(x, w, counts, offsets, sorted, act, k, hidden, inter);                                     \
  }                                                                                                       \
  extern "C" __global__ void moe_ffn_down_##SUFFIX(const float* act, const T* w, const uint32_t* counts,  \
                                                    const uint32_t* offsets, T* y, int hidden, int inter) { \
    down<T>(act, w, counts, offsets, y, hidden, inter);                                                   \
  }

FFN(f32, float)
FFN(bf16, __nv_bfloat16)
FFN(f16, __half)
