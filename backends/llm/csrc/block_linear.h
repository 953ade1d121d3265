// Shared by the block-quantised linears (q8_0_linear.cpp, q4_1_linear.cpp): activations quantised per 32-block
// to int8 with their own scale, the output store, and the split of a call into (row group, token) tiles.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define NEREID_Q8_VNNI 1
#endif
#if NEREID_Q8_VNNI && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define NEREID_Q8_AMX 1
#endif

namespace nereid {
namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kGroup = 16;  // output rows per packed group

// The call's activations quantised: per token K bytes (int8) and, per block, the scale and the accumulator's
// start value -128 * sum (int32; the block sums of |q| <= 127 stay far inside int32 with the dot products).
struct QuantX {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> start;
  int64_t blocks = 0;
  const int8_t* row(int64_t r) const { return q.data() + r * blocks * kBlock; }
};

// The argument checks and dtype dispatch of a block-quantised linear op `name`: x [M, K] float32 or bfloat16,
// weight [N / 16, K / 32, group_bytes] uint8 (packed groups of 16 rows), scales [N / 16, K / 32, scale_width]
// float32, n_out = N. Calls run(x_ptr, groups, blocks, m, out_ptr) with x's C++ type; returns out [M, N].
template <typename Run>
at::Tensor block_linear(const char* name, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                        int64_t n_out, int64_t group_bytes, int64_t scale_width, const Run& run) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && scales.device().is_cpu(), name, " runs on CPU");
  TORCH_CHECK(weight.dim() == 3 && weight.scalar_type() == at::kByte && weight.is_contiguous() &&
                  weight.size(2) == group_bytes,
              "weight must be a contiguous [N / 16, K / 32, ", group_bytes, "] uint8 tensor");
  const int64_t groups = weight.size(0), blocks = weight.size(1);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 3 &&
                  scales.size(0) == groups && scales.size(1) == blocks && scales.size(2) == scale_width,
              "scales must be a contiguous [N / 16, K / 32, ", scale_width, "] float32 tensor");
  TORCH_CHECK(n_out > (groups - 1) * kGroup && n_out <= groups * kGroup, "n_out ", n_out, " does not fit ",
              groups, " groups of 16 rows");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == blocks * kBlock, "x must be [M, ", blocks * kBlock, "]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  const at::Tensor xc = x.contiguous();
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, n_out}, x.options());
  if (m == 0) return out;
  if (x.scalar_type() == at::kFloat) {
    run(xc.data_ptr<float>(), groups, blocks, m, out.data_ptr<float>());
  } else {
    run(xc.data_ptr<c10::BFloat16>(), groups, blocks, m, out.data_ptr<c10::BFloat16>());
  }
  return out;
}

template <typename T>
void quantize_rows(const T* x, int64_t m, int64_t blocks, QuantX& out) {
  out.blocks = blocks;
  out.q.resize(m * blocks * kBlock);
  out.scale.resize(m * blocks);
  out.start.resize(m * blocks);
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * blocks; i < end * blocks; ++i) {  // i: a block of a token
      const T* src = x + i * kBlock;
      float amax = 0.f;
      for (int64_t e = 0; e < kBlock; ++e) amax = std::max(amax, std::fabs(static_cast<float>(src[e])));
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t sum = 0;
      for (int64_t e = 0; e < kBlock; ++e) {
        const int8_t v = static_cast<int8_t>(std::nearbyint(static_cast<float>(src[e]) * inv));  // |v| <= 127
        out.q[i * kBlock + e] = v;
        sum += v;
      }
      out.scale[i] = amax / 127.f;
      out.start[i] = -128 * sum;
    }
  });
}

// Writes out[r, g * 16 + l] for l < valid (the last group may be padding past the real rows).
template <typename T>
void store_group(T* out, int64_t n_out, int64_t r, int64_t g, const float* vals) {
  const int64_t valid = std::min(kGroup, n_out - g * kGroup);
  T* dst = out + r * n_out + g * kGroup;
#if NEREID_Q8_VNNI
  if (valid == kGroup) {
    const __m512 v = _mm512_loadu_ps(vals);
    if constexpr (std::is_same_v<T, float>) {
      _mm512_storeu_ps(dst, v);
    } else {  // bfloat16, rounded to nearest even as c10::BFloat16 does (finite values)
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
    }
    return;
  }
#endif
  for (int64_t l = 0; l < valid; ++l) dst[l] = static_cast<T>(vals[l]);
}

#if NEREID_Q8_VNNI
inline __m512i bcast32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return _mm512_set1_epi32(v);
}

#endif

constexpr int64_t kGroupsPerTask = 2;  // 32 weight rows: <= 48 KiB for K = 1536, kept in L1/L2 per task
constexpr int64_t kTokens = 4;

// Runs tile(r0, R, g0, C) over all m tokens x `groups` row groups: tasks of kGroupsPerTask groups in parallel,
// each passing its weight rows (kept in cache) over the tokens kTokens at a time.
template <typename Tile>
void for_each_tile(int64_t groups, int64_t m, const Tile& tile) {
  const int64_t tasks = (groups + kGroupsPerTask - 1) / kGroupsPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g0 = t * kGroupsPerTask, C = std::min(kGroupsPerTask, groups - g0);
      for (int64_t r0 = 0; r0 < m; r0 += kTokens) tile(r0, std::min(kTokens, m - r0), g0, C);
    }
  });
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
  // NEREID_Q8_0_AMX=0 keeps every call (q8_0 and q4_1) on the integer path (for measurements).
  static const bool ok = !(std::getenv("NEREID_Q8_0_AMX") && std::string(std::getenv("NEREID_Q8_0_AMX")) == "0") &&
                         syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// One (group, block) of weights [8 quads][16 rows][4] u8 -> the bfloat16 B tile [16 pairs][16 rows][2]:
// q * scale - 128 * scale (q8_0: u8 = q + 128), or q * scale + offset where `offset` is given (q4_1's m).
inline void dequant_block(const uint8_t* src, const float* scale, const float* offset, uint16_t* dst) {
  const __m512 ws = _mm512_loadu_ps(scale);
  const __m512 wo = offset ? _mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(offset)) : _mm512_setzero_ps();
  const __m512i quarter = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2);
  __m512 wsx[4], bias[4];  // lane l of part p: row 4p + l / 4 (a part: 16 bytes = 4 rows x 4 values)
  for (int p = 0; p < 4; ++p) {
    wsx[p] = _mm512_permutexvar_ps(_mm512_add_epi32(quarter, _mm512_set1_epi32(4 * p)), ws);
    bias[p] = offset ? _mm512_permutexvar_ps(_mm512_add_epi32(quarter, _mm512_set1_epi32(4 * p)), wo)
                     : _mm512_mul_ps(wsx[p], _mm512_set1_ps(128.f));
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

// dequant(g, b, dst): the bfloat16 B tile of group g's block b (`dequant_block`).
template <typename T, typename Dequant>
void run_amx(const T* x, int64_t blocks, int64_t groups, int64_t m, int64_t n_out, T* out, const Dequant& dequant) {
  const int64_t k = blocks * kBlock, mp = (m + 31) / 32 * 32;
  // x in bfloat16 as A tiles: [mp / 16][blocks][16 rows][32], each tile contiguous; rows past m are zeros.
  std::vector<uint16_t> xb(mp * k, 0);
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t b = 0; b < blocks; ++b) {
        uint16_t* dst = xb.data() + ((r / 16 * blocks + b) * 16 + r % 16) * kBlock;
        for (int64_t e = 0; e < kBlock; ++e) dst[e] = bf16_bits(x[r * k + b * kBlock + e]);
      }
  });
  const int64_t tasks = (groups + 1) / 2;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    std::vector<uint16_t> bt(2 * blocks * 512);
    alignas(64) float c[4][kGroup * kGroup];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g0 = 2 * t, C = std::min<int64_t>(2, groups - g0);
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t b = 0; b < blocks; ++b) {
          uint16_t* dst = bt.data() + (j * blocks + b) * 512;
          if (j < C) dequant(g0 + j, b, dst);
          else std::fill(dst, dst + 512, 0);
        }
      const uint16_t* b0 = bt.data();
      const uint16_t* b1 = bt.data() + blocks * 512;
      for (int64_t r0 = 0; r0 < mp; r0 += 32) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t b = 0; b < blocks; ++b) {
          _tile_loadd(4, xb.data() + (r0 / 16 * blocks + b) * 512, 64);
          _tile_loadd(5, xb.data() + ((r0 / 16 + 1) * blocks + b) * 512, 64);
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

}  // namespace
}  // namespace nereid
