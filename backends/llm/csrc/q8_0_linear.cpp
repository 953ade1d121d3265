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


#if NEREID_Q8_AMX
// Many rows (a prefill chunk, a big batch): the integer path's per-block float work (convert, scale, add for
// every 32 products) caps it near 40 products per cycle, so instead each task dequantises its 32 weight rows
// once into bfloat16 AMX B tiles and multiplies them with the activations in bfloat16 on the tile unit,
// accumulating in float32 across all of K: the same weights, the activations rounded to bfloat16 instead of
// int8 per block. Used from kAmxRows rows on, where dequantising (K x 32 values per task) is cheap.
constexpr int64_t kAmxRows = 32;

bool amx_usable() {
  // Linux hands the tile registers' state only to a process that asks (ARCH_REQ_XCOMP_PERM, XTILEDATA).
  // NEREID_Q8_0_AMX=0 keeps every call on the integer path (for measurements).
  static const bool ok = !(std::getenv("NEREID_Q8_0_AMX") && std::string(std::getenv("NEREID_Q8_0_AMX")) == "0") &&
                         syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// One (group, block) of weights [8 quads][16 rows][4] u8 -> the bfloat16 B tile [16 pairs][16 rows][2].
inline void dequant_block(const uint8_t* src, const float* scale, uint16_t* dst) {
  const __m512 ws = _mm512_loadu_ps(scale);
  const __m512i quarter = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2);
  __m512 wsx[4], bias[4];  // lane l of part p: row 4p + l / 4 (a part: 16 bytes = 4 rows x 4 values)
  for (int p = 0; p < 4; ++p) {
    wsx[p] = _mm512_permutexvar_ps(_mm512_add_epi32(quarter, _mm512_set1_epi32(4 * p)), ws);
    bias[p] = _mm512_mul_ps(wsx[p], _mm512_set1_ps(128.f));
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int q = 0; q < 8; ++q) {
    __m512 f[4];
    for (int p = 0; p < 4; ++p) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + q * 64 + p * 16));
      f[p] = _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), wsx[p], bias[p]);
    }
    // 32-bit unit u of lo: row u / 2's pair (k0, k1) for even u, (k2, k3) for odd u; hi: rows 8-15.
    const __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(f[1], f[0]);
    const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(f[3], f[2]);
    _mm512_storeu_si512(dst + (2 * q) * 32, _mm512_permutex2var_epi32(lo, even, hi));
    _mm512_storeu_si512(dst + (2 * q + 1) * 32, _mm512_permutex2var_epi32(lo, odd, hi));
  }
}

inline uint16_t bf16_bits(float v) { return c10::BFloat16(v).x; }
inline uint16_t bf16_bits(c10::BFloat16 v) { return v.x; }

template <typename T>
void run_amx(const T* x, const Weights& w, int64_t groups, int64_t m, int64_t n_out, T* out) {
  const int64_t k = w.blocks * kBlock, mp = (m + 31) / 32 * 32;
  // x in bfloat16 as A tiles: [mp / 16][blocks][16 rows][32], each tile contiguous; rows past m are zeros.
  std::vector<uint16_t> xb(mp * k, 0);
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t b = 0; b < w.blocks; ++b) {
        uint16_t* dst = xb.data() + ((r / 16 * w.blocks + b) * 16 + r % 16) * kBlock;
        for (int64_t e = 0; e < kBlock; ++e) dst[e] = bf16_bits(x[r * k + b * kBlock + e]);
      }
  });
  const int64_t tasks = (groups + 1) / 2;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    std::vector<uint16_t> bt(2 * w.blocks * 512);
    alignas(64) float c[4][kGroup * kGroup];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g0 = 2 * t, C = std::min<int64_t>(2, groups - g0);
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t b = 0; b < w.blocks; ++b) {
          uint16_t* dst = bt.data() + (j * w.blocks + b) * 512;
          if (j < C) dequant_block(w.q + ((g0 + j) * w.blocks + b) * kGroupBytes, w.scale + ((g0 + j) * w.blocks + b) * kGroup, dst);
          else std::fill(dst, dst + 512, 0);
        }
      const uint16_t* b0 = bt.data();
      const uint16_t* b1 = bt.data() + w.blocks * 512;
      for (int64_t r0 = 0; r0 < mp; r0 += 32) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t b = 0; b < w.blocks; ++b) {
          _tile_loadd(4, xb.data() + (r0 / 16 * w.blocks + b) * 512, 64);
          _tile_loadd(5, xb.data() + ((r0 / 16 + 1) * w.blocks + b) * 512, 64);
          _tile_loadd(6, b0 + b * 512, 64);
          _tile_loadd(7, b1 + b * 512, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        if constexpr (std::is_same_v<T, float>) {
          if (C == 2 && r0 + 32 <= m && (g0 + 2) * kGroup <= n_out) {  // a whole 32 x 32 tile: straight out
            float* dst = out + r0 * n_out + g0 * kGroup;
            _tile_stored(0, dst, n_out * 4);
            _tile_stored(1, dst + kGroup, n_out * 4);
            _tile_stored(2, dst + 16 * n_out, n_out * 4);
            _tile_stored(3, dst + 16 * n_out + kGroup, n_out * 4);
            continue;
          }
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
        for (int64_t h = 0; h < 2; ++h)
          for (int64_t i = 0; i < 16 && r0 + 16 * h + i < m; ++i)
            for (int64_t j = 0; j < C; ++j) store_group(out, n_out, r0 + 16 * h + i, g0 + j, c[2 * h + j] + i * kGroup);
      }
    }
    _tile_release();
  });
}
#endif

template <typename T>
void run(const T* x, const Weights& w, int64_t groups, int64_t m, int64_t n_out, T* out) {
#if NEREID_Q8_AMX
  if (m >= kAmxRows && amx_usable()) return run_amx(x, w, groups, m, n_out, out);
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
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && scales.device().is_cpu(),
              "q8_0_linear runs on CPU");
  TORCH_CHECK(weight.dim() == 3 && weight.scalar_type() == at::kByte && weight.is_contiguous() &&
                  weight.size(2) == kGroupBytes,
              "weight must be a contiguous [N / 16, K / 32, 512] uint8 tensor");
  const int64_t groups = weight.size(0), blocks = weight.size(1);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 3 &&
                  scales.size(0) == groups && scales.size(1) == blocks && scales.size(2) == kGroup,
              "scales must be a contiguous [N / 16, K / 32, 16] float32 tensor");
  TORCH_CHECK(n_out > (groups - 1) * kGroup && n_out <= groups * kGroup, "n_out ", n_out, " does not fit ",
              groups, " groups of 16 rows");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == blocks * kBlock, "x must be [M, ", blocks * kBlock, "]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  const at::Tensor xc = x.contiguous();
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, n_out}, x.options());
  if (m == 0) return out;
  const Weights w{weight.data_ptr<uint8_t>(), scales.data_ptr<float>(), blocks};
  if (x.scalar_type() == at::kFloat) {
    run(xc.data_ptr<float>(), w, groups, m, n_out, out.data_ptr<float>());
  } else {
    run(xc.data_ptr<c10::BFloat16>(), w, groups, m, n_out, out.data_ptr<c10::BFloat16>());
  }
  return out;
}

}  // namespace
}  // namespace nereid

TORCH_LIBRARY_FRAGMENT(nereid_native, m) {
  m.def("q8_0_linear(Tensor x, Tensor weight, Tensor scales, int n_out) -> Tensor");
  m.def("q8_0_amx_rows() -> int", &nereid::q8_0_amx_rows);
}

TORCH_LIBRARY_IMPL(nereid_native, CPU, m) { m.impl("q8_0_linear", &nereid::q8_0_linear); }
