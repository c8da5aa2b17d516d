// The routed experts' FFN for few tokens per expert (decode): each warp owns one output row of
// one expert and reads that weight row once for all of the expert's tokens (up to TOKENS at a
// time; more tokens reread it from cache), in the aligned order of moe_align.cu.
//
// 1. moe_ffn_gate_up_T: act[p, r] = silu(x_t · gate_e[r]) * (x_t · up_e[r]), f32, for every
//    aligned row p of expert e (token t = sorted_slots[p] / k). gate_up: (E, 2I, H), gate rows
//    then up rows. Grid (ceil(I / warps), E).
// 2. moe_ffn_down_T: y[p, r] = act[p] · down_e[r], written as T. down: (E, H, I).
//    Grid (ceil(H / warps), E).
// Grid rows run over the active experts of the alignment (blocks past num_active return), so
// a decode step launches blocks for its k experts only, not for all E. Padding rows (sentinel
// slots) are neither read nor written. With `vec` (the host checks that rows are multiples of 8
// elements and 16-byte aligned) each lane reads 16 bytes of a weight row at a time; otherwise
// one element. The prefill path (many tokens per expert) is moe_grouped_gemm.cu.

#include <stdint.h>

#include "convert.cuh"

#define FULL 0xffffffffu
#define TOKENS 4

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}

// acc[r][j] += w_r · in_j over this lane's share of the rows (len elements), for the first n
// of TOKENS inputs; the caller sums the lanes.
template <int ROWS, typename W, typename X>
__device__ __forceinline__ void dot_rows(const W* const (&w)[ROWS], const X* const (&in)[TOKENS], int n,
                                         int len, bool vec, float (&acc)[ROWS][TOKENS]) {
  const int lane = threadIdx.x & 31;
  if (vec) {
#pragma unroll 2
    for (int h = lane * 8; h < len; h += 32 * 8) {
      float wv[ROWS][8];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) load8(w[r] + h, wv[r]);
#pragma unroll
      for (int j = 0; j < TOKENS; ++j) {
        if (j < n) {
          float xv[8];
          load8(in[j] + h, xv);
#pragma unroll
          for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int q = 0; q < 8; ++q) acc[r][j] += wv[r][q] * xv[q];
        }
      }
    }
  } else {
    for (int h = lane; h < len; h += 32) {
      float wv[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) wv[r] = to_f32(w[r][h]);
#pragma unroll
      for (int j = 0; j < TOKENS; ++j) {
        if (j < n) {
          const float xv = to_f32(in[j][h]);
#pragma unroll
          for (int r = 0; r < ROWS; ++r) acc[r][j] += wv[r] * xv;
        }
      }
    }
  }
}

template <typename T>
__device__ void gate_up(const T* __restrict__ x, const T* __restrict__ w, const uint32_t* __restrict__ counts,
                        const uint32_t* __restrict__ offsets, const uint32_t* __restrict__ sorted_slots,
                        const uint32_t* __restrict__ active, const uint32_t* __restrict__ num_active,
                        float* __restrict__ act, int k, int hidden, int inter, bool vec) {
  if (blockIdx.y >= num_active[0]) return;
  const int e = active[blockIdx.y];
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const uint32_t count = counts[e], first = offsets[e];
  if (r >= inter) return;
  const T* gate = w + ((size_t)e * 2 * inter + r) * hidden;
  const T* const rows[2] = {gate, gate + (size_t)inter * hidden};
  for (uint32_t done = 0; done < count; done += TOKENS) {
    const int n = min((uint32_t)TOKENS, count - done);
    const T* xs[TOKENS];
    float acc[2][TOKENS] = {};
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) {
      const uint32_t slot = j < n ? sorted_slots[first + done + j] : 0;
      xs[j] = x + (size_t)(slot / k) * hidden;
    }
    dot_rows<2>(rows, xs, n, hidden, vec, acc);
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) {
      const float gj = warp_sum(acc[0][j]), uj = warp_sum(acc[1][j]);
      if (lane == 0 && j < n) act[(size_t)(first + done + j) * inter + r] = gj / (1.0f + expf(-gj)) * uj;
    }
  }
}

template <typename T>
__device__ void down(const float* __restrict__ act, const T* __restrict__ w, const uint32_t* __restrict__ counts,
                     const uint32_t* __restrict__ offsets, const uint32_t* __restrict__ active,
                     const uint32_t* __restrict__ num_active, T* __restrict__ y, int hidden, int inter, bool vec) {
  if (blockIdx.y >= num_active[0]) return;
  const int e = active[blockIdx.y];
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const uint32_t count = counts[e], first = offsets[e];
  if (r >= hidden) return;
  const T* const rows[1] = {w + ((size_t)e * hidden + r) * inter};
  for (uint32_t done = 0; done < count; done += TOKENS) {
    const int n = min((uint32_t)TOKENS, count - done);
    const float* as[TOKENS];
    float acc[1][TOKENS] = {};
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) as[j] = act + (size_t)(first + done + (j < n ? j : 0)) * inter;
    dot_rows<1>(rows, as, n, inter, vec, acc);
#pragma unroll
    for (int j = 0; j < TOKENS; ++j) {
      const float v = warp_sum(acc[0][j]);
      if (lane == 0 && j < n) y[(size_t)(first + done + j) * hidden + r] = from_f32<T>(v);
    }
  }
}

#define FFN(SUFFIX, T)                                                                                     \
  extern "C" __global__ void moe_ffn_gate_up_##SUFFIX(const T* x, const T* w, const uint32_t* counts,      \
                                                       const uint32_t* offsets, const uint32_t* sorted,    \
                                                       const uint32_t* active, const uint32_t* num_active, \
                                                       float* act, int k, int hidden, int inter, int vec) { \
    gate_up<T>(x, w, counts, offsets, sorted, active, num_active, act, k, hidden, inter, vec != 0);        \
  }                                                                                                        \
  extern "C" __global__ void moe_ffn_down_##SUFFIX(const float* act, const T* w, const uint32_t* counts,   \
                                                    const uint32_t* offsets, const uint32_t* active,       \
                                                    const uint32_t* num_active, T* y, int hidden,          \
                                                    int inter, int vec) {                                  \
    down<T>(act, w, counts, offsets, active, num_active, y, hidden, inter, vec != 0);                     \
  }

FFN(f32, float)
FFN(bf16, __nv_bfloat16)
FFN(f16, __half)
