// Paged decode attention on the CPU: one query token per sequence attends to that sequence's keys and values
// read where they lie in the block-paged cache. Nothing is gathered or padded: each (sequence, KV head) pair
// walks its own block table once for the scores and once for the weighted values, and the pairs are spread
// over ATen's OpenMP threads. Registered as `torch.ops.nereid_native.paged_decode_attention`; built on first
// use by backends/llm/native.py for the machine it runs on (-march=native).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "vec.h"

namespace nereid {
namespace {

struct Layout {
  int64_t block_size;  // tokens per cache block
  int64_t token_stride;  // elements between two tokens of a block: kv_heads * head_dim
  int64_t half;  // elements from a key to its value: num_blocks * block_size * token_stride
  int64_t head_dim;
  int64_t group;  // query heads per KV head
};

// Scores, softmax numerators and weighted values for the `group` query heads of one KV head of one sequence,
// over its context tokens [start, start + len). q: group x head_dim (float); keys: cache + kv_head * head_dim.
// Out: acc (group x head_dim) = sum over the tokens of e^(s - max) * v, unnormalised, and stats = the group's
// maxima, then the sums of e^(s - max) — so that parts of one context can be combined (`combine`).
template <typename T>
void attend_scalar(const float* q, const T* keys, const int64_t* blocks, int64_t start, int64_t len, float scale,
                   const Layout& l, float* scores, float* acc, float* stats) {
  const int64_t hd = l.head_dim, g_n = l.group, bs = l.block_size;
  const auto row = [&](int64_t t) { return (blocks[(start + t) / bs] * bs + (start + t) % bs) * l.token_stride; };
  for (int64_t g = 0; g < g_n; ++g) stats[g] = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < len; ++t) {
    const T* k = keys + row(t);
    for (int64_t g = 0; g < g_n; ++g) {
      float s = 0.f;
      for (int64_t d = 0; d < hd; ++d) s += static_cast<float>(k[d]) * q[g * hd + d];
      s *= scale;
      scores[g * len + t] = s;
      stats[g] = std::max(stats[g], s);
    }
  }
  std::fill(acc, acc + g_n * hd, 0.f);
  for (int64_t g = 0; g < g_n; ++g) {
    float sum = 0.f;
    for (int64_t t = 0; t < len; ++t) sum += (scores[g * len + t] = std::exp(scores[g * len + t] - stats[g]));
    stats[g_n + g] = sum;
  }
  for (int64_t t = 0; t < len; ++t) {
    const T* v = keys + l.half + row(t);
    for (int64_t g = 0; g < g_n; ++g) {
      const float p = scores[g * len + t];
      for (int64_t d = 0; d < hd; ++d) acc[g * hd + d] += p * static_cast<float>(v[d]);
    }
  }
}

#if defined(__AVX512F__)
// r[i] = the sum of v[i]'s sixteen lanes: four rounds of lane shuffles and adds (~45 instructions for sixteen
// sums, against ~8 per sum one vector at a time). The shuffles leave the sum of input slot 4k + L at
// position 4L + k, so slot s is fed v[4 * (s % 4) + s / 4].
inline __m512 reduce16(const __m512* v) {
  constexpr auto in = [](int s) { return 4 * (s % 4) + s / 4; };
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = v[in(2 * i)], b = v[in(2 * i + 1)];
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 a = t[2 * j], b = t[2 * j + 1];
    u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  const __m512 w0 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
  const __m512 w1 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
  return _mm512_add_ps(_mm512_shuffle_ps(w0, w1, 0x44), _mm512_shuffle_ps(w0, w1, 0xEE));
}

// One query head's products with a key, before the horizontal sum: keys widened to float and FMA'd, or,
// for bfloat16 on CPUs with AVX512-BF16, VDPBF16PS on pairs (bf16 x bf16 products are exact in float).
template <typename T, int C>
struct Query {
  __m512 q[C];
  void set(const float* qf) {
    for (int c = 0; c < C; ++c) q[c] = _mm512_loadu_ps(qf + 16 * c);
  }
  __m512 dot(const T* k) const {
    __m512 s = _mm512_mul_ps(load16(k), q[0]);
    for (int c = 1; c < C; ++c) s = _mm512_fmadd_ps(load16(k + 16 * c), q[c], s);
    return s;
  }
};

#if defined(__AVX512BF16__)
template <int C>
struct Query<c10::BFloat16, C> {
  __m512bh q[C / 2];
  void set(const float* qf) {  // qf holds bfloat16 values: converting back is exact
    for (int c = 0; c < C / 2; ++c)
      q[c] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(qf + 32 * c + 16), _mm512_loadu_ps(qf + 32 * c));
  }
  __m512 dot(const c10::BFloat16* k) const {
    __m512 s = _mm512_setzero_ps();
    for (int c = 0; c < C / 2; ++c)
      s = _mm512_dpbf16_ps(s, q[c], reinterpret_cast<__m512bh>(_mm512_loadu_si512(k + 32 * c)));
    return s;
  }
};
#endif

// The same computation with head_dim = 16 * C and G query heads per KV head fixed at compile time: scores
// for sixteen keys at a time per head (one `reduce16`), weighted values with G x C accumulators in registers.
template <typename T, int C, int G>
void attend_avx512(const float* q, const T* keys, const int64_t* blocks, int64_t start, int64_t ctx, float scale,
                   const Layout& l, float* scores, float* acc, float* stats) {
  constexpr int hd = 16 * C;
  Query<T, C> qs[G];
  for (int g = 0; g < G; ++g) qs[g].set(q + g * hd);
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 vmax[G];
  for (int g = 0; g < G; ++g) vmax[g] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const int64_t bs = l.block_size;
  int64_t t = 0, b = start / bs, o = start % bs;  // token start + t is at offset o of the b-th block
  const T* kp[16];
  for (; t + 16 <= ctx; t += 16) {
    for (int i = 0; i < 16; ++i) {
      kp[i] = keys + (blocks[b] * bs + o) * l.token_stride;
      if (++o == bs) o = 0, ++b;
    }
    for (int g = 0; g < G; ++g) {
      __m512 d[16];
      for (int i = 0; i < 16; ++i) d[i] = qs[g].dot(kp[i]);
      const __m512 sc = _mm512_mul_ps(reduce16(d), vscale);
      _mm512_storeu_ps(scores + g * ctx + t, sc);
      vmax[g] = _mm512_max_ps(vmax[g], sc);
    }
  }
  float maxs[G];
  for (int g = 0; g < G; ++g) maxs[g] = _mm512_reduce_max_ps(vmax[g]);
  for (; t < ctx; ++t) {
    const T* k = keys + (blocks[b] * bs + o) * l.token_stride;
    if (++o == bs) o = 0, ++b;
    for (int g = 0; g < G; ++g) {
      const float v = _mm512_reduce_add_ps(qs[g].dot(k)) * scale;
      scores[g * ctx + t] = v;
      maxs[g] = std::max(maxs[g], v);
    }
  }
  for (int g = 0; g < G; ++g) {
    float* row = scores + g * ctx;
    const __m512 m = _mm512_set1_ps(maxs[g]);
    __m512 sum = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + 16 <= ctx; t += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + t), m));
      _mm512_storeu_ps(row + t, e);
      sum = _mm512_add_ps(sum, e);
    }
    if (t < ctx) {
      const __mmask16 mask = static_cast<__mmask16>((1u << (ctx - t)) - 1);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + t), m));
      _mm512_mask_storeu_ps(row + t, mask, e);
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
    }
    stats[g] = maxs[g];
    stats[G + g] = _mm512_reduce_add_ps(sum);
  }
  __m512 a[G][C];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) a[g][c] = _mm512_setzero_ps();
  b = start / bs, o = start % bs;
  for (t = 0; t < ctx; ++t) {
    const T* v = keys + l.half + (blocks[b] * bs + o) * l.token_stride;
    if (++o == bs) o = 0, ++b;
    __m512 p[G];
    for (int g = 0; g < G; ++g) p[g] = _mm512_set1_ps(scores[g * ctx + t]);
    for (int c = 0; c < C; ++c) {
      const __m512 vc = load16(v + 16 * c);
      for (int g = 0; g < G; ++g) a[g][c] = _mm512_fmadd_ps(p[g], vc, a[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + g * hd + 16 * c, a[g][c]);
}
#endif

template <typename T>
using AttendFn = void (*)(const float*, const T*, const int64_t*, int64_t, int64_t, float, const Layout&, float*, float*,
                          float*);

template <typename T>
AttendFn<T> pick(int64_t head_dim, int64_t group) {
#if defined(__AVX512F__)
#define NEREID_GROUPS(C)                           \
  switch (group) {                                 \
    case 1: return attend_avx512<T, C, 1>;         \
    case 2: return attend_avx512<T, C, 2>;         \
    case 3: return attend_avx512<T, C, 3>;         \
    case 4: return attend_avx512<T, C, 4>;         \
    case 5: return attend_avx512<T, C, 5>;         \
    case 6: return attend_avx512<T, C, 6>;         \
    case 7: return attend_avx512<T, C, 7>;         \
    case 8: return attend_avx512<T, C, 8>;         \
    default: break;                                \
  }
  if (head_dim == 64) { NEREID_GROUPS(4) }
  if (head_dim == 128) { NEREID_GROUPS(8) }
#undef NEREID_GROUPS
#endif
  return attend_scalar<T>;
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_tables,
         const at::Tensor& context_lens, double scale, at::Tensor& out) {
  const int64_t n = q.size(0), heads = q.size(1), hd = q.size(2), kvh = kv_cache.size(3);
  const Layout l{kv_cache.size(2), kvh * hd, kv_cache.size(1) * kv_cache.size(2) * kvh * hd, hd, heads / kvh};
  const int64_t max_blocks = block_tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* cache = kv_cache.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const AttendFn<T> attend = pick<T>(hd, l.group);
  const float fscale = static_cast<float>(scale);
  // Below ~768 (token, KV head) pairs of context the call takes ~15 us: one thread, no wake-up. Otherwise
  // work units are (sequence, KV head) pairs, each pair's context cut into `parts` ranges when there are too
  // few pairs to keep every thread busy (one sequence: 3 pairs on 2 threads), combined afterwards from their
  // maxima and sums. Thread w takes units w, w + T, ...: the decodes come sorted by context length, so
  // striding gives every thread a similar share of short and long ones.
  const int64_t items = n * kvh, g_hd = l.group * hd;
  int64_t pairs = 0, shortest = std::numeric_limits<int64_t>::max();
  for (int64_t i = 0; i < n; ++i) pairs += lens[i] * kvh, shortest = std::min(shortest, lens[i]);
  const int64_t threads = pairs < 768 ? 1 : at::get_num_threads();
  int64_t parts = 1;
  if (items < 2 * threads) parts = std::max<int64_t>(1, std::min((2 * threads + items - 1) / items, shortest / 64));
  const int64_t units = items * parts, workers = std::min(threads, units);
  // Per unit: acc (group x head_dim), then the group's maxima and sums.
  std::vector<float> partial(parts > 1 ? units * (g_hd + 2 * l.group) : 0);
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(g_hd), acc(g_hd), stats(2 * l.group), scores;
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t unit = w; unit < units; unit += workers) {
        const int64_t item = unit / parts, part = unit % parts;
        const int64_t seq = item / kvh, kv = item % kvh, ctx = lens[seq];
        const int64_t first = (seq * heads + kv * l.group) * hd;  // this group's query heads are contiguous
        const int64_t from = ctx * part / parts, len = ctx * (part + 1) / parts - from;
        float* a = parts > 1 ? partial.data() + unit * (g_hd + 2 * l.group) : acc.data();
        float* st = parts > 1 ? a + g_hd : stats.data();
        if (len <= 0) {
          std::fill(a, a + g_hd, 0.f);
          for (int64_t g = 0; g < l.group; ++g) st[g] = -std::numeric_limits<float>::infinity(), st[l.group + g] = 0.f;
        } else {
          for (int64_t i = 0; i < g_hd; ++i) qf[i] = static_cast<float>(qp[first + i]);
          scores.resize(l.group * len);
          attend(qf.data(), cache + kv * hd, tables + seq * max_blocks, from, len, fscale, l, scores.data(), a, st);
        }
        if (parts == 1) {
          for (int64_t i = 0; i < g_hd; ++i)
            op[first + i] = len > 0 ? static_cast<T>(a[i] / st[l.group + i / hd]) : T(0);
        }
      }
    }
  });
  if (parts == 1) return;
  for (int64_t item = 0; item < items; ++item) {  // e^(m_p - M)-weighted sums of the parts
    const int64_t seq = item / kvh, kv = item % kvh, first = (seq * heads + kv * l.group) * hd;
    for (int64_t g = 0; g < l.group; ++g) {
      float top = -std::numeric_limits<float>::infinity(), sum = 0.f;
      for (int64_t p = 0; p < parts; ++p) top = std::max(top, partial[(item * parts + p) * (g_hd + 2 * l.group) + g_hd + g]);
      std::vector<float> o(hd, 0.f);
      for (int64_t p = 0; p < parts; ++p) {
        const float* a = partial.data() + (item * parts + p) * (g_hd + 2 * l.group);
        const float m = a[g_hd + g];
        if (m == -std::numeric_limits<float>::infinity()) continue;
        const float wgt = std::exp(m - top);
        sum += wgt * a[g_hd + l.group + g];
        for (int64_t d = 0; d < hd; ++d) o[d] += wgt * a[g * hd + d];
      }
      for (int64_t d = 0; d < hd; ++d) op[first + g * hd + d] = sum > 0.f ? static_cast<T>(o[d] / sum) : T(0);
    }
  }
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && kv_cache.dim() == 5 && kv_cache.size(0) == 2,
              "expected q [n, heads, head_dim] and kv_cache [2, blocks, block_size, kv_heads, head_dim]");
  TORCH_CHECK(q.scalar_type() == kv_cache.scalar_type(), "q and kv_cache must have one dtype");
  TORCH_CHECK(q.size(2) == kv_cache.size(4) && q.size(1) % kv_cache.size(3) == 0,
              "q's heads must be a multiple of the cache's KV heads, with the same head_dim");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && context_lens.scalar_type() == at::kLong,
              "block_tables and context_lens must be int64");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == q.size(0) && context_lens.numel() == q.size(0),
              "one block table row and one context length per query");
  TORCH_CHECK(q.is_contiguous() && kv_cache.is_contiguous() && block_tables.is_contiguous() &&
                  context_lens.is_contiguous(),
              "inputs must be contiguous");
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int64_t capacity = block_tables.size(1) * kv_cache.size(2);
  for (int64_t i = 0; i < context_lens.numel(); ++i)
    TORCH_CHECK(lens[i] <= capacity, "context length ", lens[i], " exceeds its block table (", capacity, ")");
  at::Tensor out = at::empty_like(q);
  if (q.scalar_type() == at::kFloat) {
    run<float>(q, kv_cache, block_tables, context_lens, scale, out);
  } else if (q.scalar_type() == at::kBFloat16) {
    run<c10::BFloat16>(q, kv_cache, block_tables, context_lens, scale, out);
  } else {
    TORCH_CHECK(false, "paged_decode_attention supports float32 and bfloat16, not ", q.scalar_type());
  }
  return out;
}

}  // namespace
}  // namespace nereid

TORCH_LIBRARY(nereid_native, m) {
  m.def("paged_decode_attention(Tensor q, Tensor kv_cache, Tensor block_tables, Tensor context_lens, float scale)"
        " -> Tensor");
}

TORCH_LIBRARY_IMPL(nereid_native, CPU, m) { m.impl("paged_decode_attention", &nereid::paged_decode_attention); }
