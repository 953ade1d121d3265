// x @ W.T with W held as GGUF Q4_1 blocks: per 32 weights along the input dim 4-bit unsigned q in 0..15 with a
// scale d and a min m, w = d * q + m. x is quantised per 32-block to int8 with its own scale s (block_linear.h),
// and per block  sum_i w_i x_i ~ d * s * sum(q_i * xq_i) + m * s * sum(xq_i):  the first sum by `vpdpbusd`
// (the nibbles are the u8 operand, xq the s8 one), the second from the block sum computed once per token.
// Registered as `torch.ops.nereid_native.q4_1_linear`; the packing is backends/llm/q4_1.py's `pack`.
//
// Layout: output rows in groups of 16 (as q8_0_linear.cpp); per (group, block) 256 bytes = 4 vectors x 16 rows x
// 4 bytes, byte j of row r in vector v holding element 4v + j in its low nibble and element 16 + 4v + j in its
// high one, so `and 0x0F` / `shift 4, and 0x0F` give the 8 quad vectors of q8_0's layout. Then 32 floats: the
// 16 rows' d, then their m. From 32 rows on, where the CPU has AMX, the blocks are dequantised to bfloat16
// tiles and multiplied as q8_0's prefill path does (block_linear.h's `run_amx`).
#include "block_linear.h"

namespace nereid {
namespace {

constexpr int64_t kGroupBytes4 = kGroup * kBlock / 2;  // one block of one group

struct Weights4 {
  const uint8_t* q;  // [groups, blocks, 4, 16, 4]
  const float* scale;  // [groups, blocks, 2, 16]: d, m
  int64_t blocks;
};

// The activation block's sum times its scale (start = -128 * sum, see block_linear.h), the m term's factor.
inline float scaled_sum(const QuantX& xq, int64_t xb) {
  return xq.scale[xb] * static_cast<float>(xq.start[xb] / -128);
}

// Tokens [r0, r0 + R) x groups [g0, g0 + C), any CPU; the same sums as the AVX512 path.
template <typename T>
void tile4_scalar(const QuantX& xq, const Weights4& w, int64_t r0, int64_t R, int64_t g0, int64_t C,
                  int64_t n_out, T* out) {
  for (int64_t r = r0; r < r0 + R; ++r) {
    const int8_t* x = xq.row(r);
    for (int64_t g = g0; g < g0 + C; ++g) {
      float acc[kGroup] = {};
      for (int64_t b = 0; b < w.blocks; ++b) {
        const uint8_t* wb = w.q + (g * w.blocks + b) * kGroupBytes4;
        const float* ws = w.scale + (g * w.blocks + b) * 2 * kGroup;
        const int64_t xb = r * w.blocks + b;
        const float xs = xq.scale[xb], xsum = scaled_sum(xq, xb);
        for (int64_t l = 0; l < kGroup; ++l) {
          int32_t d = 0;
          for (int64_t e = 0; e < kBlock; ++e) {
            const uint8_t byte = wb[(e % 16 / 4) * 64 + l * 4 + e % 4];
            d += int32_t(e < 16 ? byte & 15 : byte >> 4) * x[b * kBlock + e];
          }
          acc[l] = std::fma(float(d), ws[l] * xs, acc[l]);
          acc[l] = std::fma(ws[kGroup + l], xsum, acc[l]);
        }
      }
      store_group(out, n_out, r, g, acc);
    }
  }
}

#if NEREID_Q8_VNNI
// R tokens x C groups (16 rows each): a block's C x 8 nibble vectors are unpacked once for the R tokens.
template <typename T, int R, int C>
void tile4_avx512(const QuantX& xq, const Weights4& w, int64_t r0, int64_t g0, int64_t n_out, T* out) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < w.blocks; ++b) {
    __m512i wv[C][8];
    __m512 wd[C], wm[C];
    for (int j = 0; j < C; ++j) {
      const uint8_t* wb = w.q + ((g0 + j) * w.blocks + b) * kGroupBytes4;
      for (int v = 0; v < 4; ++v) {
        const __m512i raw = _mm512_loadu_si512(wb + v * 64);
        wv[j][v] = _mm512_and_si512(raw, low);
        wv[j][v + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
      }
      const float* ws = w.scale + ((g0 + j) * w.blocks + b) * 2 * kGroup;
      wd[j] = _mm512_loadu_ps(ws);
      wm[j] = _mm512_loadu_ps(ws + kGroup);
    }
    for (int i = 0; i < R; ++i) {
      const int64_t xb = (r0 + i) * w.blocks + b;
      const int8_t* x = xq.q.data() + xb * kBlock;
      const __m512 xs = _mm512_set1_ps(xq.scale[xb]), xsum = _mm512_set1_ps(scaled_sum(xq, xb));
      __m512i d[C];
      for (int j = 0; j < C; ++j) d[j] = _mm512_setzero_si512();
      for (int q = 0; q < 8; ++q) {
        const __m512i xv = bcast32(x + 4 * q);
        for (int j = 0; j < C; ++j) d[j] = _mm512_dpbusd_epi32(d[j], wv[j][q], xv);
      }
      for (int j = 0; j < C; ++j) {
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[j]), _mm512_mul_ps(wd[j], xs), acc[i][j]);
        acc[i][j] = _mm512_fmadd_ps(wm[j], xsum, acc[i][j]);
      }
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
void tile4_c(const QuantX& xq, const Weights4& w, int64_t r0, int64_t R, int64_t g0, int64_t n_out, T* out) {
  switch (R) {
    case 4: return tile4_avx512<T, 4, C>(xq, w, r0, g0, n_out, out);
    case 3: return tile4_avx512<T, 3, C>(xq, w, r0, g0, n_out, out);
    case 2: return tile4_avx512<T, 2, C>(xq, w, r0, g0, n_out, out);
    default: return tile4_avx512<T, 1, C>(xq, w, r0, g0, n_out, out);
  }
}
#endif

template <typename T>
void run4(const T* x, const Weights4& w, int64_t groups, int64_t m, int64_t n_out, T* out) {
#if NEREID_Q8_AMX
  if (m >= kAmxRows && amx_usable()) {  // the nibbles unpacked to q8_0's quad layout, then bfloat16 tiles
    return run_amx(x, w.blocks, groups, m, n_out, out, [&](int64_t g, int64_t b, uint16_t* dst) {
      const uint8_t* src = w.q + (g * w.blocks + b) * kGroupBytes4;
      const float* ws = w.scale + (g * w.blocks + b) * 2 * kGroup;
      alignas(64) uint8_t quads[8 * 64];
      const __m512i low = _mm512_set1_epi8(0x0F);
      for (int v = 0; v < 4; ++v) {
        const __m512i raw = _mm512_loadu_si512(src + v * 64);
        _mm512_store_si512(quads + v * 64, _mm512_and_si512(raw, low));
        _mm512_store_si512(quads + (v + 4) * 64, _mm512_and_si512(_mm512_srli_epi16(raw, 4), low));
      }
      dequant_block(quads, ws, ws + kGroup, dst);
    });
  }
#endif
  QuantX xq;
  quantize_rows(x, m, w.blocks, xq);
  for_each_tile(groups, m, [&](int64_t r0, int64_t R, int64_t g0, int64_t C) {
#if NEREID_Q8_VNNI
    if (C == 2) return tile4_c<T, 2>(xq, w, r0, R, g0, n_out, out);
    return tile4_c<T, 1>(xq, w, r0, R, g0, n_out, out);
#else
    tile4_scalar(xq, w, r0, R, g0, C, n_out, out);
#endif
  });
}

at::Tensor q4_1_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, int64_t n_out) {
  return block_linear("q4_1_linear", x, weight, scales, n_out, kGroupBytes4, 2 * kGroup,
                      [&](const auto* xp, int64_t groups, int64_t blocks, int64_t m, auto* out) {
                        run4(xp, Weights4{weight.data_ptr<uint8_t>(), scales.data_ptr<float>(), blocks}, groups, m, n_out, out);
                      });
}

}  // namespace
}  // namespace nereid

TORCH_LIBRARY_FRAGMENT(nereid_native, m) {
  m.def("q4_1_linear(Tensor x, Tensor weight, Tensor scales, int n_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(nereid_native, CPU, m) { m.impl("q4_1_linear", &nereid::q4_1_linear); }
