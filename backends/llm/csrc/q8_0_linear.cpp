// x @ W.T with W held as GGUF-Q8_0-style blocks (int8 in blocks of 32 along the input dim, one float scale per
// block) and x quantised per 32-block to int8 on the fly (its own scale per block, as ggml's Q8_0 x Q8_0 dot),
// so an activation outlier only coarsens its own block. Registered as `torch.ops.nereid_native.q8_0_linear`;
// the packing is backends/llm/q8_0.py's `pack`.
//
// Layout: output rows in groups of 16; per (group, block) 512 bytes = 8 quads x 16 rows x 4 bytes (row r's
// elements 4q..4q+3 of the block at [q][r]), stored as u8 = q + 128, and 16 float scales. One `vpdpbusd`
// (u8 x s8, 4 products summed per 32-bit lane) of a quad row with one broadcast activation quad adds 4 terms to
// each of the 16 rows' dot products, so a block is 8 instructions for 16 rows with no horizontal sums, and the
// block's int32 results are scaled by the 16 weight scales times the token's block scale in one multiply-add.
// The +128 offset is taken back through the accumulator's start value, -128 * (sum of the activation block),
// computed once per token. A task's weight rows stay in cache while every token of the call passes over them.
#include "block_linear.h"

namespace nereid {
namespace {

constexpr int64_t kGroupBytes = kGroup * kBlock;  // one block of one group

struct Weights {
  const uint8_t* q;  // [groups, blocks, 8, 16, 4]
  const float* scale;  // [groups, blocks, 16]
  int64_t blocks;
};

// Tokens [r0, r0 + R) x groups [g0, g0 + C), any CPU; the same sums as the AVX512 path, in another order.
template <typename T>
void tile_scalar(const QuantX& xq, const Weights& w, int64_t r0, int64_t R, int64_t g0, int64_t C,
                 int64_t n_out, T* out) {
  for (int64_t r = r0; r < r0 + R; ++r) {
    const int8_t* x = xq.row(r);
    for (int64_t g = g0; g < g0 + C; ++g) {
      float acc[kGroup] = {};
      for (int64_t b = 0; b < w.blocks; ++b) {
        const uint8_t* wb = w.q + (g * w.blocks + b) * kGroupBytes;
        const float* ws = w.scale + (g * w.blocks + b) * kGroup;
        const float xs = xq.scale[r * w.blocks + b];
        for (int64_t l = 0; l < kGroup; ++l) {
          int32_t d = xq.start[r * w.blocks + b];
          for (int64_t e = 0; e < kBlock; ++e) d += int32_t(wb[(e / 4) * 64 + l * 4 + e % 4]) * x[b * kBlock + e];
          acc[l] += float(d) * (ws[l] * xs);
        }
      }
      store_group(out, n_out, r, g, acc);
    }
  }
}

#if NEREID_Q8_VNNI
// R tokens x C groups (16 rows each): a block's 8 C weight vectors are loaded once for the R tokens.
template <typename T, int R, int C>
void tile_avx512(const QuantX& xq, const Weights& w, int64_t r0, int64_t g0, int64_t n_out, T* out) {
  __m512 acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < w.blocks; ++b) {
    __m512i wv[C][8];
    __m512 ws[C];
    for (int j = 0; j < C; ++j) {
      const uint8_t* wb = w.q + ((g0 + j) * w.blocks + b) * kGroupBytes;
      for (int q = 0; q < 8; ++q) wv[j][q] = _mm512_loadu_si512(wb + q * 64);
      ws[j] = _mm512_loadu_ps(w.scale + ((g0 + j) * w.blocks + b) * kGroup);
    }
    for (int i = 0; i < R; ++i) {
      const int64_t xb = (r0 + i) * w.blocks + b;
      const int8_t* x = xq.q.data() + xb * kBlock;
      const __m512 xs = _mm512_set1_ps(xq.scale[xb]);
      const __m512i start = _mm512_set1_epi32(xq.start[xb]);
      __m512i d[C];
      for (int j = 0; j < C; ++j) d[j] = start;
      for (int q = 0; q < 8; ++q) {
        const __m512i xv = bcast32(x + 4 * q);
        for (int j = 0; j < C; ++j) d[j] = _mm512_dpbusd_epi32(d[j], wv[j][q], xv);
      }
      for (int j = 0; j < C; ++j)
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[j]), _mm512_mul_ps(ws[j], xs), acc[i][j]);
    }
  }
  alignas(64) float vals[kGroup];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) {
      _mm512_store_ps(vals, acc[i][j]);
      store_group(out, n_out, r0 + i, g0 + j, vals);
    }
}

template <typename T, int C>
void tile_c(const QuantX& xq, const Weights& w, int64_t r0, int64_t R, int64_t g0, int64_t n_out, T* out) {
  switch (R) {
    case 4: return tile_avx512<T, 4, C>(xq, w, r0, g0, n_out, out);
    case 3: return tile_avx512<T, 3, C>(xq, w, r0, g0, n_out, out);
    case 2: return tile_avx512<T, 2, C>(xq, w, r0, g0, n_out, out);
    default: return tile_avx512<T, 1, C>(xq, w, r0, g0, n_out, out);
  }
}
#endif

template <typename T>
void tile(const QuantX& xq, const Weights& w, int64_t r0, int64_t R, int64_t g0, int64_t C, int64_t n_out,
          T* out) {
#if NEREID_Q8_VNNI
  if (C == 2) return tile_c<T, 2>(xq, w, r0, R, g0, n_out, out);
  return tile_c<T, 1>(xq, w, r0, R, g0, n_out, out);
#else
  tile_scalar(xq, w, r0, R, g0, C, n_out, out);
#endif
}



template <typename T>
void run(const T* x, const Weights& w, int64_t groups, int64_t m, int64_t n_out, T* out) {
#if NEREID_Q8_AMX
  if (m >= kAmxRows && amx_usable()) {
    return run_amx(x, w.blocks, groups, m, n_out, out, [&](int64_t g, int64_t b, uint16_t* dst) {
      dequant_block(w.q + (g * w.blocks + b) * kGroupBytes, w.scale + (g * w.blocks + b) * kGroup, nullptr, dst);
    });
  }
#endif
  QuantX xq;
  quantize_rows(x, m, w.blocks, xq);
  for_each_tile(groups, m, [&](int64_t r0, int64_t R, int64_t g0, int64_t C) { tile(xq, w, r0, R, g0, C, n_out, out); });
}

// From how many rows on a call takes the AMX path here (0: never: no AMX, or NEREID_Q8_0_AMX=0).
int64_t q8_0_amx_rows() {
#if NEREID_Q8_AMX
  return amx_usable() ? kAmxRows : 0;
#else
  return 0;
#endif
}

at::Tensor q8_0_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, int64_t n_out) {
  return block_linear("q8_0_linear", x, weight, scales, n_out, kGroupBytes, kGroup,
                      [&](const auto* xp, int64_t groups, int64_t blocks, int64_t m, auto* out) {
                        run(xp, Weights{weight.data_ptr<uint8_t>(), scales.data_ptr<float>(), blocks}, groups, m, n_out, out);
                      });
}

}  // namespace
}  // namespace nereid

TORCH_LIBRARY_FRAGMENT(nereid_native, m) {
  m.def("q8_0_linear(Tensor x, Tensor weight, Tensor scales, int n_out) -> Tensor");
  m.def("q8_0_amx_rows() -> int", &nereid::q8_0_amx_rows);
}

TORCH_LIBRARY_IMPL(nereid_native, CPU, m) { m.impl("q8_0_linear", &nereid::q8_0_linear); }
