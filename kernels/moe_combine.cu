// The weighted combine back to token order: out[t, :] = Σ_j weights[t k + j] · y[p, :] with
// p = slot_position[t k + j], the row where the expert-sorted GEMM left slot t k + j; a slot
// that landed nowhere (p >= rows: moe_align.cu's mark for an expert id out of range) adds
// nothing. Accumulates in f32 whatever T is, as the CPU path does.
//
// y:   (rows, hidden) of T, rows in expert-sorted, padded order
// out: (tokens, hidden) of T, every element written
// Launch: grid (ceil(hidden / blockDim.x), min(tokens, 65535)); blocks step over tokens by
// gridDim.y.

#include <stdint.h>

#include "convert.cuh"

template <typename T>
__device__ void combine(const T* __restrict__ y, const float* __restrict__ weights,
                        const uint32_t* __restrict__ slot_position, T* __restrict__ out, int rows,
                        int tokens, int k, int hidden) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= hidden) return;
  for (int t = blockIdx.y; t < tokens; t += gridDim.y) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
      const size_t slot = (size_t)t * k + j;
      const uint32_t p = slot_position[slot];
      if (p < (uint32_t)rows) acc += weights[slot] * to_f32(y[(size_t)p * hidden + h]);
    }
    out[(size_t)t * hidden + h] = from_f32<T>(acc);
  }
}

#define COMBINE(NAME, T)                                                                    \
  extern "C" __global__ void NAME(const T* y, const float* weights, const uint32_t* position, \
                                  T* out, int rows, int tokens, int k, int hidden) {          \
    combine<T>(y, weights, position, out, rows, tokens, k, hidden);                           \
  }

COMBINE(moe_combine_f32, float)
COMBINE(moe_combine_bf16, __nv_bfloat16)
COMBINE(moe_combine_f16, __half)
