// The routed experts' FFN for many tokens per expert (prefill): a grouped GEMM on tensor cores
// over the aligned rows of moe_align.cu, where every tile of BM rows belongs to one expert.
//
// 1. moe_gemm_gate_up_T: act[p, n] = silu(x_t · gate_e[n]) * (x_t · up_e[n]) for the rows p of
//    each tile (token t = sorted_slots[p] / k; padding rows read zeros and write zeros).
//    w: (E, 2N, K), gate rows then up rows; act: (capacity, N) in T.
// 2. moe_gemm_down_T: y[p, n] = act[p] · down_e[n]. w: (E, N, K); y: (capacity, N) in T.
// Grid (ceil(N / BN), capacity / BM); tiles from num_tiles on return at once.
//
// T is bf16 or f16 (WMMA 16x16x16, f32 accumulation). The host guarantees K % 8 == 0 and
// 16-byte aligned rows, so that every copy is one 16-byte cp.async; N is free (bounds checks).
// Tiles move global -> shared through a STAGES-deep cp.async pipeline, so the loads of the next
// K-steps overlap the tensor-core work of this one.

#include <mma.h>
#include <stdint.h>

#include "convert.cuh"

using namespace nvcuda;

namespace {

constexpr int BM = 64;  // rows per tile: the alignment's tile (ops::cuda::GEMM_TILE)
constexpr int BN = 64;  // output columns per block
constexpr int BK = 32;  // K per pipeline step
constexpr int STAGES = 3;
// Shared rows of BK + 8 elements (80 bytes): consecutive rows start in different banks, and
// 16-row fragment offsets stay 32-byte aligned as WMMA requires.
constexpr int LDS = BK + 8;
constexpr int THREADS = 128;  // 4 warps as 2 x 2, each a 32 x 32 quarter of the tile
constexpr int CHUNKS = BK / 8;  // 16-byte chunks per shared row
// Epilogue rows of f32 in the same shared memory, padded as above.
constexpr int LDC = BN + 4;

template <bool GATED>
struct Smem {
  static constexpr int B_ROWS = GATED ? 2 * BN : BN;
  static constexpr int STAGE = (BM + B_ROWS) * LDS;  // elements per stage
  static constexpr int MAIN = STAGES * STAGE * 2;    // bytes (16-bit elements)
  static constexpr int EPILOGUE = (GATED ? 2 : 1) * BM * LDC * 4;
  static constexpr int BYTES = MAIN > EPILOGUE ? MAIN : EPILOGUE;
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0 copies nothing and zero-fills the 16 bytes
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <typename T, bool GATED>
__device__ void grouped_gemm(const T* __restrict__ a, const T* __restrict__ w,
                             const uint32_t* __restrict__ sorted_slots,
                             const uint32_t* __restrict__ tile_expert,
                             const uint32_t* __restrict__ num_tiles, T* __restrict__ out, int k_top,
                             int slots, int K, int N) {
  using S = Smem<GATED>;
  __shared__ __align__(128) unsigned char smem[S::BYTES];
  T* tiles = reinterpret_cast<T*>(smem);

  const int tile = blockIdx.y;
  if (tile >= (int)num_tiles[0]) return;
  const int e = tile_expert[tile];
  const int row0 = tile * BM, n0 = blockIdx.x * BN;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wr = (warp >> 1) * 32, wc = (warp & 1) * 32;  // this warp's quarter

  // Each thread copies the same two A rows (and B rows) at every K-step: resolve them once.
  // Thread tid handles chunk (tid % CHUNKS) of rows tid / CHUNKS + {0, 32}.
  const int chunk = tid % CHUNKS, r_first = tid / CHUNKS;
  const T* a_row[2];
  bool a_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int p = row0 + r_first + 32 * i;
    if (GATED) {
      const uint32_t slot = sorted_slots[p];
      a_ok[i] = slot < (uint32_t)slots;  // the sentinel marks a padding row
      a_row[i] = a + (size_t)(a_ok[i] ? slot / k_top : 0) * K;
    } else {
      a_ok[i] = true;
      a_row[i] = a + (size_t)p * K;
    }
  }
  // B rows: gate (and up) rows n0 + r of expert e.
  const size_t w_rows = GATED ? 2 * (size_t)N : (size_t)N;
  const T* w_e = w + (size_t)e * w_rows * K;
  const T* b_row[S::B_ROWS / 32];
  bool b_ok[S::B_ROWS / 32];
#pragma unroll
  for (int i = 0; i < S::B_ROWS / 32; ++i) {
    const int r = r_first + 32 * i;  // row within the shared B tile
    const int n = n0 + (r % BN);
    b_ok[i] = n < N;
    const size_t wrow = (GATED && r >= BN ? (size_t)N : 0) + (b_ok[i] ? n : 0);
    b_row[i] = w_e + wrow * K;
  }

  auto load = [&](int stage, int kt) {
    T* as = tiles + stage * S::STAGE;
    T* bs = as + BM * LDS;
    const int kc = kt * BK + chunk * 8;
    const bool k_ok = kc < K;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = r_first + 32 * i;
      const bool ok = a_ok[i] && k_ok;
      cp_async16(as + r * LDS + chunk * 8, ok ? a_row[i] + kc : a, ok);
    }
#pragma unroll
    for (int i = 0; i < S::B_ROWS / 32; ++i) {
      const int r = r_first + 32 * i;
      const bool ok = b_ok[i] && k_ok;
      cp_async16(bs + r * LDS + chunk * 8, ok ? b_row[i] + kc : w, ok);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2], acc_up[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fill_fragment(acc[i][j], 0.0f);
      if (GATED) wmma::fill_fragment(acc_up[i][j], 0.0f);
    }

  const int k_steps = (K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_steps) load(s, s);
    cp_async_commit();  // an empty group keeps the wait count below uniform
  }
  for (int kt = 0; kt < k_steps; ++kt) {
    cp_async_wait<STAGES - 2>();
    // Step kt has landed for every thread, and every warp is done with step kt - 1, whose
    // stage the prefetch below overwrites.
    __syncthreads();
    const int next = kt + STAGES - 1;
    if (next < k_steps) load(next % STAGES, next);
    cp_async_commit();

    const T* as = tiles + (kt % STAGES) * S::STAGE;
    const T* bs = as + BM * LDS;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + (wr + 16 * i) * LDS + kk, LDS);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        // B^T is stored N x K (K contiguous): exactly a column-major K x N fragment.
        wmma::load_matrix_sync(fb, bs + (wc + 16 * j) * LDS + kk, LDS);
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::mma_sync(acc[i][j], fa[i], fb, acc[i][j]);
        if (GATED) {
          wmma::load_matrix_sync(fb, bs + (BN + wc + 16 * j) * LDS + kk, LDS);
#pragma unroll
          for (int i = 0; i < 2; ++i) wmma::mma_sync(acc_up[i][j], fa[i], fb, acc_up[i][j]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the epilogue's

  float* c = reinterpret_cast<float*>(smem);
  float* c_up = c + BM * LDC;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int at = (wr + 16 * i) * LDC + wc + 16 * j;
      wmma::store_matrix_sync(c + at, acc[i][j], LDC, wmma::mem_row_major);
      if (GATED) wmma::store_matrix_sync(c_up + at, acc_up[i][j], LDC, wmma::mem_row_major);
    }
  __syncthreads();
  for (int idx = tid; idx < BM * BN; idx += THREADS) {
    const int r = idx / BN, col = idx % BN, n = n0 + col;
    if (n >= N) continue;
    float v = c[r * LDC + col];
    if (GATED) v = v / (1.0f + expf(-v)) * c_up[r * LDC + col];
    out[(size_t)(row0 + r) * N + n] = from_f32<T>(v);
  }
}

}  // namespace

#define GEMM(SUFFIX, T)                                                                             \
  extern "C" __global__ void __launch_bounds__(THREADS)                                             \
      moe_gemm_gate_up_##SUFFIX(const T* x, const T* w, const uint32_t* sorted_slots,               \
                                const uint32_t* tile_expert, const uint32_t* num_tiles, T* act,     \
                                int k_top, int slots, int K, int N) {                               \
    grouped_gemm<T, true>(x, w, sorted_slots, tile_expert, num_tiles, act, k_top, slots, K, N);    \
  }                                                                                                 \
  extern "C" __global__ void __launch_bounds__(THREADS)                                             \
      moe_gemm_down_##SUFFIX(const T* act, const T* w, const uint32_t* tile_expert,                 \
                             const uint32_t* num_tiles, T* y, int K, int N) {                       \
    grouped_gemm<T, false>(act, w, nullptr, tile_expert, num_tiles, y, 1, 0, K, N);                \
  }

GEMM(bf16, __nv_bfloat16)
GEMM(f16, __half)
