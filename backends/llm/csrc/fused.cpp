// The elementwise parts of a Llama decoder layer, each fused into one pass: RMSNorm (with the residual add
// before it), rotary embedding of q and k together with the K/V cache write, and SwiGLU's silu(gate) * up.
// Each rounds to the tensor's dtype exactly where PyTorch's unfused ops round (after every bfloat16
// operation), so a bfloat16 model computes what it computed op by op; float32 differs only in the order of
// the RMSNorm sum and in e^x's last bit. Registered under `torch.ops.nereid_native` (see native.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "vec.h"

namespace nereid {
namespace {

// Calls `f` with a value of the C++ type of `t` (float32 or bfloat16, the engine's CPU dtypes).
template <typename F>
void dispatch(at::ScalarType t, const char* name, F f) {
  if (t == at::kFloat) {
    f(float{});
  } else if (t == at::kBFloat16) {
    f(c10::BFloat16{});
  } else {
    TORCH_CHECK(false, name, " supports float32 and bfloat16, not ", t);
  }
}

// Rows per parallel chunk: about 16K elements, so a decode's single row never wakes a second thread.
int64_t grain(int64_t row) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(row, 1)); }

// y = norm(x) * w: normalised in float32, rounded to T, then scaled and rounded (Hugging Face's order).
template <typename T>
void norm_row(const T* x, const T* w, T* y, int64_t h, float eps) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < h; ++i) ss += static_cast<float>(x[i]) * static_cast<float>(x[i]);
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(h) + eps);
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 vinv = _mm512_set1_ps(inv);
  for (; i + 16 <= h; i += 16)
    store16(y + i, _mm512_mul_ps(round16(_mm512_mul_ps(load16(x + i), vinv), T()), load16(w + i)));
#endif
  for (; i < h; ++i)
    y[i] = static_cast<T>(round_to(static_cast<float>(x[i]) * inv, T()) * static_cast<float>(w[i]));
}

template <typename T>
void add_rows(const T* a, const T* b, T* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) store16(out + i, _mm512_add_ps(load16(a + i), load16(b + i)));
#endif
  for (; i < n; ++i) out[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

void check_norm(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous [tokens, hidden] tensor");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.scalar_type() == x.scalar_type(),
              "weight must be [hidden] with x's dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "float32 or bfloat16 only, not ", x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  at::Tensor y = at::empty_like(x);
  const int64_t h = x.size(1);
  dispatch(x.scalar_type(), "rms_norm", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = weight.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0), grain(h), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) norm_row(xp + r * h, wp, yp + r * h, h, static_cast<float>(eps));
    });
  });
  return y;
}

// (x + delta, rms_norm(x + delta)): the residual stream and the next sub-layer's input in one pass.
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                                const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type() && delta.is_contiguous(),
              "delta must match x");
  at::Tensor sum = at::empty_like(x), y = at::empty_like(x);
  const int64_t h = x.size(1);
  dispatch(x.scalar_type(), "add_rms_norm", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t *xp = x.data_ptr<scalar_t>(), *dp = delta.data_ptr<scalar_t>(), *wp = weight.data_ptr<scalar_t>();
    scalar_t *sp = sum.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0), grain(h), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        add_rows(xp + r * h, dp + r * h, sp + r * h, h);
        norm_row(sp + r * h, wp, yp + r * h, h, static_cast<float>(eps));
      }
    });
  });
  return {sum, y};
}

// One head: out = x * cos + rotate_half(x) * sin, rounding after each product and the sum.
template <typename T>
void rotate(const T* x, const T* cos, const T* sin, T* out, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t d = 0; d < hd; ++d) {
    const float rot = d < half ? -static_cast<float>(x[d + half]) : static_cast<float>(x[d - half]);
    const float a = round_to(static_cast<float>(x[d]) * static_cast<float>(cos[d]), T());
    const float b = round_to(rot * static_cast<float>(sin[d]), T());
    out[d] = static_cast<T>(a + b);
  }
}

// qkv: [tokens, (heads + 2 kv_heads) * head_dim] from the fused projection; cos/sin: [tokens, head_dim].
// Returns the rotated q [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim], and stores the
// rotated k and the unrotated v at each token's `slot_mapping` slot of one layer's cache.
std::tuple<at::Tensor, at::Tensor> rope_write_kv(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                                                 at::Tensor kv_cache, const at::Tensor& slot_mapping, int64_t heads,
                                                 int64_t kv_heads) {
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.is_contiguous(),
              "kv_cache must be one layer's contiguous [2, blocks, block_size, kv_heads, head_dim]");
  const int64_t n = qkv.size(0), hd = kv_cache.size(4);
  TORCH_CHECK(kv_cache.size(3) == kv_heads && hd % 2 == 0, "kv_cache does not hold kv_heads heads");
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && qkv.size(1) == (heads + 2 * kv_heads) * hd,
              "qkv must be a contiguous [tokens, (heads + 2 * kv_heads) * head_dim] tensor");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == n * hd && sin.numel() == n * hd,
              "cos and sin must be contiguous [tokens, head_dim]");
  TORCH_CHECK(qkv.scalar_type() == kv_cache.scalar_type() && cos.scalar_type() == qkv.scalar_type() &&
                  sin.scalar_type() == qkv.scalar_type(),
              "qkv, cos, sin and kv_cache must have one dtype");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == n && slot_mapping.is_contiguous(),
              "slot_mapping must be int64 [tokens]");
  const int64_t slots = kv_cache.size(1) * kv_cache.size(2);
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t) TORCH_CHECK(sm[t] >= 0 && sm[t] < slots, "slot ", sm[t], " outside the cache");
  at::Tensor q = at::empty({n, heads, hd}, qkv.options()), k = at::empty({n, kv_heads, hd}, qkv.options());
  dispatch(qkv.scalar_type(), "rope_write_kv", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t *src = qkv.data_ptr<scalar_t>(), *cp = cos.data_ptr<scalar_t>(), *sp = sin.data_ptr<scalar_t>();
    scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *cache = kv_cache.data_ptr<scalar_t>();
    const int64_t width = (heads + 2 * kv_heads) * hd, stride = kv_heads * hd, half = slots * stride;
    at::parallel_for(0, n, grain(width), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const scalar_t* row = src + t * width;
        const scalar_t *c = cp + t * hd, *s = sp + t * hd;
        for (int64_t h = 0; h < heads; ++h) rotate(row + h * hd, c, s, qp + (t * heads + h) * hd, hd);
        for (int64_t h = 0; h < kv_heads; ++h) rotate(row + (heads + h) * hd, c, s, kp + (t * kv_heads + h) * hd, hd);
        std::copy(kp + t * stride, kp + (t + 1) * stride, cache + sm[t] * stride);
        std::copy(row + (heads + kv_heads) * hd, row + width, cache + half + sm[t] * stride);
      }
    });
  });
  return {q, k};
}

// gate_up: [tokens, 2 * inter] (gate, then up) -> silu(gate) * up, rounded after silu and after the product.
at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0,
              "gate_up must be a contiguous [tokens, 2 * intermediate] tensor");
  TORCH_CHECK(gate_up.scalar_type() == at::kFloat || gate_up.scalar_type() == at::kBFloat16,
              "float32 or bfloat16 only, not ", gate_up.scalar_type());
  const int64_t n = gate_up.size(0), inter = gate_up.size(1) / 2;
  at::Tensor out = at::empty({n, inter}, gate_up.options());
  dispatch(gate_up.scalar_type(), "silu_mul", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* src = gate_up.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, grain(inter), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t *g = src + r * 2 * inter, *u = g + inter;
        scalar_t* o = dst + r * inter;
        int64_t i = 0;
#if defined(__AVX512F__)
        for (; i + 16 <= inter; i += 16) {
          const __m512 x = load16(g + i);
          const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
          store16(o + i, _mm512_mul_ps(round16(silu, scalar_t()), load16(u + i)));
        }
#endif
        for (; i < inter; ++i) {
          const float x = static_cast<float>(g[i]);
          o[i] = static_cast<scalar_t>(round_to(x / (1.f + std::exp(-x)), scalar_t()) * static_cast<float>(u[i]));
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace nereid

TORCH_LIBRARY_FRAGMENT(nereid_native, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor delta, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rope_write_kv(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) kv_cache, Tensor slot_mapping, int heads,"
        " int kv_heads) -> (Tensor, Tensor)");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
}

TORCH_LIBRARY_IMPL(nereid_native, CPU, m) {
  m.impl("rms_norm", &nereid::rms_norm);
  m.impl("add_rms_norm", &nereid::add_rms_norm);
  m.impl("rope_write_kv", &nereid::rope_write_kv);
  m.impl("silu_mul", &nereid::silu_mul);
}
