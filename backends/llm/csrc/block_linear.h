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

}  // namespace
}  // namespace nereid
