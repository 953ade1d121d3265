// x @ W.T with W held as GGUF-Q8_0-style blocks (int8 in blocks of 32 along the input dim, one float scale per
// block) and x quantised per 32-block to int8 on the fly (its own scale per block, as ggml's Q8_0 x Q8_0 dot),
// so an activation outlier only coarsens its own block. Registered as `torch.ops.nereid_native.q8_0_linear`;
// the packing is backends/llm/q8_0.py's `pack`.
//
// Layout (K padded to a multiple of 64 with zero blocks of scale 0): a row is K/64 chunks of 64 bytes, each two
// blocks interleaved by 4-byte quads (quad i of block 0, quad i of block 1, ...), stored as u8 = q + 128. One
// `vpdpbusd` (u8 x s8, 4 products summed per 32-bit lane) over a chunk then leaves block 0's partial sums in the
// even lanes and block 1's in the odd ones, and one 8-byte broadcast of the two block scales lines up with
// them: no horizontal sum per block. The +128 offset is taken back through the accumulator's start value,
// -128 * (sum of the activation quad), computed once per token, not per weight row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace nereid {
namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kChunk = 64;

// Activations of M tokens, quantised: per token Kp bytes (interleaved like the weights), Kp / 32 scales and,
// per chunk, 16 int32 start values for the accumulator (-128 * each lane's quad sum).
struct QuantX {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> start;
};

// Position inside a 64-byte chunk of element e (0..31) of the chunk's block h (0 or 1).
inline int64_t interleaved(int64_t h, int64_t e) { return (e / 4) * 8 + h * 4 + e % 4; }

template <typename T>
void quantize_rows(const T* x, int64_t m, int64_t k, int64_t kp, QuantX& out) {
  const int64_t chunks = kp / kChunk;
  out.q.assign(m * kp, 0);
  out.scale.assign(m * (kp / kBlock), 0.f);
  out.start.assign(m * chunks * 16, 0);
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    float vals[kBlock];
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + r * k;
      for (int64_t b = 0; b < kp / kBlock; ++b) {
        const int64_t n = std::max<int64_t>(0, std::min<int64_t>(kBlock, k - b * kBlock));
        float amax = 0.f;
        for (int64_t e = 0; e < kBlock; ++e) {
          vals[e] = e < n ? static_cast<float>(row[b * kBlock + e]) : 0.f;
          amax = std::max(amax, std::fabs(vals[e]));
        }
        const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
        out.scale[r * (kp / kBlock) + b] = d;
        int8_t* chunk = out.q.data() + r * kp + (b / 2) * kChunk;
        int32_t* start = out.start.data() + (r * chunks + b / 2) * 16;
        for (int64_t e = 0; e < kBlock; ++e) {
          const int8_t v = static_cast<int8_t>(std::nearbyint(vals[e] * id));  // |v| <= 127
          const int64_t pos = interleaved(b % 2, e);
          chunk[pos] = v;
          start[pos / 4] -= 128 * v;
        }
      }
    }
  });
}

template <typename T>
inline void store(T* out, float v) {
  *out = static_cast<T>(v);
}

// out[r, n] for tokens [r0, r0 + R) and weight rows [n0, n0 + C), scalar (any CPU); same lane order as AVX512.
template <typename T>
void tile_scalar(const QuantX& xq, const uint8_t* w, const float* ws, int64_t kp, int64_t r0, int64_t R,
                 int64_t n0, int64_t C, int64_t n_out, T* out) {
  const int64_t chunks = kp / kChunk, blocks = kp / kBlock;
  for (int64_t r = r0; r < r0 + R; ++r) {
    const int8_t* x = xq.q.data() + r * kp;
    const float* xs = xq.scale.data() + r * blocks;
    const int32_t* start = xq.start.data() + r * chunks * 16;
    for (int64_t n = n0; n < n0 + C; ++n) {
      const uint8_t* wr = w + n * kp;
      float acc = 0.f;
      for (int64_t c = 0; c < chunks; ++c) {
        int32_t d[2] = {0, 0};
        for (int64_t l = 0; l < 16; ++l) d[l % 2] += start[c * 16 + l];
        for (int64_t p = 0; p < kChunk; ++p) d[(p / 4) % 2] += int32_t(wr[c * kChunk + p]) * x[c * kChunk + p];
        for (int64_t h = 0; h < 2; ++h) acc += float(d[h]) * (ws[n * blocks + 2 * c + h] * xs[2 * c + h]);
      }
      store(out + r * n_out + n, acc);
    }
  }
}

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
// R tokens x C weight rows, each weight chunk loaded once for the R tokens. Per (token, row, chunk): one
// vpdpbusd, one convert, one multiply of the scales, one fma.
template <typename T, int R, int C>
void tile_avx512(const QuantX& xq, const uint8_t* w, const float* ws, int64_t kp, int64_t r0, int64_t n0,
                 int64_t n_out, T* out) {
  const int64_t chunks = kp / kChunk, blocks = kp / kBlock;
  __m512 acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    __m512i wv[C];
    __m512 wsv[C];
    for (int j = 0; j < C; ++j) {
      wv[j] = _mm512_loadu_si512(w + (n0 + j) * kp + c * kChunk);
      double pair;  // the chunk's two block scales: lanes alternate (even: block 0, odd: block 1)
      std::memcpy(&pair, ws + (n0 + j) * blocks + 2 * c, sizeof(pair));
      wsv[j] = _mm512_castpd_ps(_mm512_set1_pd(pair));
    }
    for (int i = 0; i < R; ++i) {
      const int64_t r = r0 + i;
      const __m512i xv = _mm512_loadu_si512(xq.q.data() + r * kp + c * kChunk);
      const __m512i sv = _mm512_loadu_si512(xq.start.data() + (r * chunks + c) * 16);
      double pair;
      std::memcpy(&pair, xq.scale.data() + r * blocks + 2 * c, sizeof(pair));
      const __m512 xsv = _mm512_castpd_ps(_mm512_set1_pd(pair));
      for (int j = 0; j < C; ++j) {
        const __m512i d = _mm512_dpbusd_epi32(sv, wv[j], xv);
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(wsv[j], xsv), acc[i][j]);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) store(out + (r0 + i) * n_out + n0 + j, _mm512_reduce_add_ps(acc[i][j]));
}

template <typename T, int R>
void tile_rows(const QuantX& xq, const uint8_t* w, const float* ws, int64_t kp, int64_t r0, int64_t n0,
               int64_t C, int64_t n_out, T* out) {
  switch (C) {
    case 4: return tile_avx512<T, R, 4>(xq, w, ws, kp, r0, n0, n_out, out);
    case 3: return tile_avx512<T, R, 3>(xq, w, ws, kp, r0, n0, n_out, out);
    case 2: return tile_avx512<T, R, 2>(xq, w, ws, kp, r0, n0, n_out, out);
    default: return tile_avx512<T, R, 1>(xq, w, ws, kp, r0, n0, n_out, out);
  }
}
#endif

template <typename T>
void tile(const QuantX& xq, const uint8_t* w, const float* ws, int64_t kp, int64_t r0, int64_t R, int64_t n0,
          int64_t C, int64_t n_out, T* out) {
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
  switch (R) {
    case 4: return tile_rows<T, 4>(xq, w, ws, kp, r0, n0, C, n_out, out);
    case 3: return tile_rows<T, 3>(xq, w, ws, kp, r0, n0, C, n_out, out);
    case 2: return tile_rows<T, 2>(xq, w, ws, kp, r0, n0, C, n_out, out);
    default: return tile_rows<T, 1>(xq, w, ws, kp, r0, n0, C, n_out, out);
  }
#else
  tile_scalar(xq, w, ws, kp, r0, R, n0, C, n_out, out);
#endif
}

// Weight rows per task: small enough that a task's rows (<= 32 x Kp bytes) stay in L1/L2 while every token
// group of the call passes over them, so each weight byte comes from memory once per call.
constexpr int64_t kRowsPerTask = 32;
constexpr int64_t kTokens = 4;
constexpr int64_t kRows = 4;

template <typename T>
void run(const T* x, const at::Tensor& w, const at::Tensor& ws, int64_t m, int64_t k, T* out) {
  const int64_t n_out = w.size(0), kp = w.size(1);
  QuantX xq;
  quantize_rows(x, m, k, kp, xq);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = ws.data_ptr<float>();
  const int64_t tasks = (n_out + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n_begin = t * kRowsPerTask, n_end = std::min(n_out, n_begin + kRowsPerTask);
      for (int64_t r0 = 0; r0 < m; r0 += kTokens) {
        const int64_t R = std::min(kTokens, m - r0);
        for (int64_t n0 = n_begin; n0 < n_end; n0 += kRows)
          tile(xq, wp, sp, kp, r0, R, n0, std::min(kRows, n_end - n0), n_out, out);
      }
    }
  });
}

at::Tensor q8_0_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && scales.device().is_cpu(),
              "q8_0_linear runs on CPU");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kByte && weight.is_contiguous(),
              "weight must be a contiguous [N, Kp] uint8 tensor");
  const int64_t n_out = weight.size(0), kp = weight.size(1);
  TORCH_CHECK(kp % kChunk == 0, "the packed input size must be a multiple of 64, got ", kp);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 2 &&
                  scales.size(0) == n_out && scales.size(1) == kp / kBlock,
              "scales must be a contiguous [N, Kp / 32] float32 tensor");
  TORCH_CHECK(x.dim() == 2, "x must be [M, K]");
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(k <= kp && kp - k < kChunk, "x has ", k, " columns, the weight ", kp, " (padded)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty({m, n_out}, x.options());
  if (m == 0) return out;
  if (x.scalar_type() == at::kFloat) {
    run(xc.data_ptr<float>(), weight, scales, m, k, out.data_ptr<float>());
  } else {
    run(xc.data_ptr<c10::BFloat16>(), weight, scales, m, k, out.data_ptr<c10::BFloat16>());
  }
  return out;
}

}  // namespace
}  // namespace nereid

TORCH_LIBRARY_FRAGMENT(nereid_native, m) {
  m.def("q8_0_linear(Tensor x, Tensor weight, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(nereid_native, CPU, m) { m.impl("q8_0_linear", &nereid::q8_0_linear); }
