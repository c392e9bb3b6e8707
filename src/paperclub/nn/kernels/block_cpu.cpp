// One Llama decoder block in a single call, for x86 CPUs (part of every build in cpu_kernels.py; needs AVX2).
//
//   x = x + o_proj(attention(rope(q, k), cache))      q, k, v = qkv_proj(rmsnorm(x)), k/v written to the cache
//   x = x + down(silu(gate) * up)                     gate, up = gate_up_proj(rmsnorm(x))
//
// A decode step of a small model is ~20 tiny elementwise ops per layer around 4 matmuls; run one by one from
// Python each costs more in dispatch than in arithmetic. Here they are loops between the batch-invariant
// matmuls of linear_*.cpp and the attention of attention_cpu.cpp, so a block costs its weight reads and little
// else (the activation, whose e^x dominates the elementwise work, runs on 8-lane vectors). The rounding follows
// the eager PyTorch reference step by step (every op computes in float32 and rounds to the activation dtype
// once), and every token row is computed on its own: results do not depend on how many rows share the call,
// which keeps greedy AR, SD and SSD token-identical.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <type_traits>
#include <vector>

#include "vec_avx2.h"

torch::Tensor linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt);  // linear_*.cpp
int64_t weight_out_features(const torch::Tensor& w);  // N and K of a weight, packed (`pack`) or not
int64_t weight_in_features(const torch::Tensor& w);
torch::Tensor attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                        int64_t S, c10::optional<torch::Tensor> mask_opt, double scale,
                        c10::optional<torch::Tensor> cu_seqlens);  // attention_cpu.cpp

namespace {

constexpr int64_t kRowGrain = 8;  // token rows per parallel work item for the elementwise loops

// The raw element type the vector helpers of vec_avx2.h load and store: bf16 as its bits, float32 as itself.
template <typename T>
using Raw = std::conditional_t<std::is_same_v<T, float>, float, uint16_t>;
template <typename T>
inline const Raw<T>* raw(const T* p) { return reinterpret_cast<const Raw<T>*>(p); }
template <typename T>
inline Raw<T>* raw(T* p) { return reinterpret_cast<Raw<T>*>(p); }

// v rounded to T and back (a no-op for float32).
template <typename T>
inline __m256 rounded(__m256 v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(to_bf16(v)), 16));
  }
}

// y[r] = w * round(x[r] * rsqrt(mean(x[r]^2) + eps)), x and y with row strides (may alias per row); D % 8 == 0.
// The sum of squares runs on 8 lanes, then the fixed tree of reduce8.
template <typename T>
void rmsnorm_rows(const T* x, int64_t x_stride, const T* w, T* y, int64_t y_stride, int64_t rows, int64_t D,
                  float eps) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Raw<T>* xr = raw(x + r * x_stride);
      Raw<T>* yr = raw(y + r * y_stride);
      __m256 ss = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 v = load8(xr + d);
        ss = _mm256_fmadd_ps(v, v, ss);
      }
      const __m256 inv = _mm256_set1_ps(1.f / std::sqrt(reduce8(ss) / float(D) + eps));
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 normed = rounded<T>(_mm256_mul_ps(load8(xr + d), inv));
        store8(yr + d, _mm256_mul_ps(load8(raw(w) + d), normed));
      }
    }
  });
}

// Half-split rotary embedding of one head vector in place: x = x * cos + cat(-x2, x1) * sin, each product and the
// sum rounded to T as the eager ops do; 8 pairs at a time (D % 16 == 0).
template <typename T>
inline void rope_head(T* x, const T* cos, const T* sin, int64_t D) {
  const int64_t half = D / 2;
  Raw<T>* xr = raw(x);
  const Raw<T>*c = raw(cos), *s = raw(sin);
  for (int64_t i = 0; i < half; i += 8) {
    const __m256 x1 = load8(xr + i), x2 = load8(xr + i + half);
    const __m256 neg_x2 = _mm256_xor_ps(x2, _mm256_set1_ps(-0.f));
    const __m256 a = _mm256_add_ps(rounded<T>(_mm256_mul_ps(x1, load8(c + i))),
                                   rounded<T>(_mm256_mul_ps(neg_x2, load8(s + i))));
    const __m256 b = _mm256_add_ps(rounded<T>(_mm256_mul_ps(x2, load8(c + i + half))),
                                   rounded<T>(_mm256_mul_ps(x1, load8(s + i + half))));
    store8(xr + i, a);
    store8(xr + i + half, b);
  }
}

template <typename T>
struct BlockArgs {
  int64_t rows, D, H, Hkv, hd, I, cap;
  float eps;
};

// From the qkv projection (one row per token, width (H + 2 Hkv) hd): optional q/k norm, rope, q out, k/v to the
// cache slot of the token's batch row (`row_b`).
template <typename T>
void qkv_epilogue(const BlockArgs<T>& a, T* qkv, const T* q_norm, const T* k_norm, const T* cos, const T* sin,
                  const int64_t* slots, const int64_t* row_b, const int64_t* write_index, T* q_out, T* kc, T* vc) {
  const int64_t width = (a.H + 2 * a.Hkv) * a.hd;
  at::parallel_for(0, a.rows, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = qkv + r * width;
      const int64_t b = row_b[r];
      const T* c = cos + r * a.hd;
      const T* s = sin + r * a.hd;
      if (q_norm) rmsnorm_rows(row, a.hd, q_norm, row, a.hd, a.H, a.hd, a.eps);
      if (k_norm) rmsnorm_rows(row + a.H * a.hd, a.hd, k_norm, row + a.H * a.hd, a.hd, a.Hkv, a.hd, a.eps);
      for (int64_t h = 0; h < a.H + a.Hkv; ++h) rope_head(row + h * a.hd, c, s, a.hd);
      std::copy(row, row + a.H * a.hd, q_out + r * a.H * a.hd);
      const int64_t pos = write_index[r];
      for (int64_t h = 0; h < a.Hkv; ++h) {
        const int64_t at = ((slots[b] * a.Hkv + h) * a.cap + pos) * a.hd;
        std::copy(row + (a.H + h) * a.hd, row + (a.H + h + 1) * a.hd, kc + at);
        std::copy(row + (a.H + a.Hkv + h) * a.hd, row + (a.H + a.Hkv + h + 1) * a.hd, vc + at);
      }
    }
  });
}

// out = x + y elementwise, rounded once (out may be x); n % 8 == 0.
template <typename T>
void add(const T* x, const T* y, T* out, int64_t n) {
  at::parallel_for(0, n / 8, 512, [&](int64_t i0, int64_t i1) {
    for (int64_t i = 8 * i0; i < 8 * i1; i += 8) {
      store8(raw(out) + i, _mm256_add_ps(load8(raw(x) + i), load8(raw(y) + i)));
    }
  });
}

// out[r, i] = round(round(silu(gate[r, i])) * up[r, i]) from gate_up rows [gate | up], silu(g) = g / (1 + e^-g),
// 8 values at a time with the vector e^x (a scalar std::exp here was a sixth of a 16-row decode step).
template <typename T>
void silu_mul_rows(const T* gu, T* out, int64_t rows, int64_t I) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Raw<T>* g = raw(gu + r * 2 * I);
      const Raw<T>* u = g + I;
      Raw<T>* o = raw(out + r * I);
      for (int64_t i = 0; i < I; i += 8) {
        const __m256 gv = load8(g + i);
        const __m256 e = exp8(_mm256_xor_ps(gv, _mm256_set1_ps(-0.f)));
        const __m256 silu = rounded<T>(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.f), e)));
        store8(o + i, _mm256_mul_ps(silu, load8(u + i)));
      }
    }
  });
}

template <typename T>
const T* opt_ptr(const c10::optional<torch::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

}  // namespace

// x: (B, T, D), or (N, D) with cu_seqlens (B + 1,): the tokens of a ragged batch packed row after row, row b's at
// [cu_seqlens[b], cu_seqlens[b + 1]), so that a batched prefill of prompts of different lengths computes no padding.
// cos, sin: one hd-vector per token in x's dtype; caches: (slots, Hkv, cap, hd); slots: (B,); write_index: one
// cache index per token; mask: (B, [1,] T, S) bool or None, T = the longest row. Returns the block's output, shaped
// as x; x is not changed.
torch::Tensor block(torch::Tensor x, torch::Tensor attn_norm, torch::Tensor w_qkv, c10::optional<torch::Tensor> b_qkv,
                    c10::optional<torch::Tensor> q_norm, c10::optional<torch::Tensor> k_norm, torch::Tensor w_o,
                    c10::optional<torch::Tensor> b_o, torch::Tensor mlp_norm, torch::Tensor w_gate_up,
                    torch::Tensor w_down, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                    torch::Tensor v_cache, torch::Tensor slots, torch::Tensor write_index, int64_t S,
                    c10::optional<torch::Tensor> mask, int64_t num_heads, double eps,
                    c10::optional<torch::Tensor> cu_seqlens) {
  const bool ragged = cu_seqlens.has_value() && cu_seqlens->defined();
  TORCH_CHECK(x.dim() == (ragged ? 2 : 3) && x.is_contiguous(),
              "block: x must be a contiguous (B, T, D) tensor, or (N, D) with cu_seqlens");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "block: layout");
  const int64_t B = slots.numel(), D = x.size(-1), rows = x.numel() / D;
  const int64_t Hkv = k_cache.size(1), cap = k_cache.size(2), hd = k_cache.size(3), H = num_heads;
  const int64_t I = weight_in_features(w_down);
  TORCH_CHECK(I % 8 == 0, "block: the MLP width must be a multiple of 8");
  TORCH_CHECK(weight_out_features(w_qkv) == (H + 2 * Hkv) * hd && weight_out_features(w_o) == D &&
                  weight_out_features(w_gate_up) == 2 * I && weight_out_features(w_down) == D && hd % 16 == 0 &&
                  D % 8 == 0 && cos.numel() == rows * hd && write_index.numel() == rows,
              "block: shapes");
  TORCH_CHECK(slots.scalar_type() == torch::kInt64 && write_index.scalar_type() == torch::kInt64, "block: int64 ids");
  auto slots_c = slots.contiguous();
  auto write_c = write_index.contiguous();
  std::vector<int64_t> row_b(rows);  // the batch row of each token
  int64_t Tq = 0;
  if (ragged) {
    auto cu = cu_seqlens->to(torch::kInt64).contiguous();
    const int64_t* c = cu.data_ptr<int64_t>();
    TORCH_CHECK(cu.numel() == B + 1 && c[0] == 0 && c[B] == rows,
                "block: cu_seqlens must run from 0 to the number of tokens, one entry per row plus one");
    for (int64_t b = 0; b < B; ++b) TORCH_CHECK(c[b + 1] >= c[b], "block: cu_seqlens must not decrease");
    for (int64_t b = 0; b < B; ++b) {
      std::fill(row_b.begin() + c[b], row_b.begin() + c[b + 1], b);
      Tq = std::max(Tq, c[b + 1] - c[b]);
    }
  } else {
    TORCH_CHECK(x.size(0) == B, "block: one slot per row");
    Tq = x.size(1);
    for (int64_t r = 0; r < rows; ++r) row_b[r] = r / Tq;
  }
  c10::optional<torch::Tensor> mask3;
  if (mask.has_value() && mask->defined()) mask3 = mask->reshape({B, Tq, S});

  auto x2 = x.view({rows, D});
  auto h = torch::empty_like(x2);
  auto out = torch::empty_like(x2);
  auto q = ragged ? torch::empty({rows, H, hd}, x.options()) : torch::empty({B, Tq, H, hd}, x.options());
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const BlockArgs<T> a{rows, D, H, Hkv, hd, I, cap, (float)eps};
    rmsnorm_rows(x2.data_ptr<T>(), D, attn_norm.data_ptr<T>(), h.data_ptr<T>(), D, rows, D, a.eps);
    auto qkv = ::linear(h, w_qkv, b_qkv);
    qkv_epilogue(a, qkv.data_ptr<T>(), opt_ptr<T>(q_norm), opt_ptr<T>(k_norm), cos.data_ptr<T>(), sin.data_ptr<T>(),
                 slots_c.data_ptr<int64_t>(), row_b.data(), write_c.data_ptr<int64_t>(), q.data_ptr<T>(),
                 k_cache.data_ptr<T>(), v_cache.data_ptr<T>());
    auto att = ::attention(q, k_cache, v_cache, slots_c, S, mask3, 1.0 / std::sqrt((double)hd), cu_seqlens);
    auto o = ::linear(att.view({rows, H * hd}), w_o, b_o);
    add(x2.data_ptr<T>(), o.data_ptr<T>(), out.data_ptr<T>(), rows * D);
    rmsnorm_rows(out.data_ptr<T>(), D, mlp_norm.data_ptr<T>(), h.data_ptr<T>(), D, rows, D, a.eps);
    auto gu = ::linear(h, w_gate_up, c10::nullopt);
    auto act = torch::empty({rows, I}, x.options());
    silu_mul_rows(gu.data_ptr<T>(), act.data_ptr<T>(), rows, I);
    auto d = ::linear(act, w_down, c10::nullopt);
    add(out.data_ptr<T>(), d.data_ptr<T>(), out.data_ptr<T>(), rows * D);
  };
  if (x.scalar_type() == torch::kBFloat16) {
    run(at::BFloat16(0.f));
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "block: bf16 or fp32");
    run(0.f);
  }
  return out.view(x.sizes());
}

// The model's final norm: rmsnorm over the last dimension of a contiguous bf16 or float32 x, weight w of x's dtype.
torch::Tensor rmsnorm(torch::Tensor x, torch::Tensor w, double eps) {
  const int64_t D = x.size(-1);
  TORCH_CHECK(x.is_contiguous() && w.scalar_type() == x.scalar_type() && w.dim() == 1 && w.numel() == D &&
                  D % 8 == 0,
              "rmsnorm: a contiguous x whose last dimension (a multiple of 8) is the weight's, of the same dtype");
  auto wc = w.contiguous();
  auto y = torch::empty_like(x);
  const int64_t rows = D ? x.numel() / D : 0;
  if (x.scalar_type() == torch::kBFloat16) {
    using T = at::BFloat16;
    rmsnorm_rows(x.data_ptr<T>(), D, wc.data_ptr<T>(), y.data_ptr<T>(), D, rows, D, (float)eps);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "rmsnorm: bf16 or fp32");
    rmsnorm_rows(x.data_ptr<float>(), D, wc.data_ptr<float>(), y.data_ptr<float>(), D, rows, D, (float)eps);
  }
  return y;
}

// All decoder blocks of a model in one call, then the final norm if one is given. params: per layer, in this order,
// [attn_norm, w_qkv, b_qkv, q_norm, k_norm, w_o, b_o, mlp_norm, w_gate_up, w_down] (None where a layer has no such
// tensor).
torch::Tensor layers(torch::Tensor x, std::vector<c10::optional<torch::Tensor>> params,
                     std::vector<torch::Tensor> k_caches, std::vector<torch::Tensor> v_caches, torch::Tensor cos,
                     torch::Tensor sin, torch::Tensor slots, torch::Tensor write_index, int64_t S,
                     c10::optional<torch::Tensor> mask, int64_t num_heads, double eps,
                     c10::optional<torch::Tensor> cu_seqlens, c10::optional<torch::Tensor> final_norm) {
  constexpr size_t kPerLayer = 10;
  TORCH_CHECK(params.size() == kPerLayer * k_caches.size() && k_caches.size() == v_caches.size(),
              "layers: one set of parameters and caches per layer");
  for (size_t l = 0; l < k_caches.size(); ++l) {
    const auto* p = &params[kPerLayer * l];
    x = block(x, *p[0], *p[1], p[2], p[3], p[4], *p[5], p[6], *p[7], *p[8], *p[9], cos, sin, k_caches[l],
              v_caches[l], slots, write_index, S, mask, num_heads, eps, cu_seqlens);
  }
  return final_norm.has_value() && final_norm->defined() ? rmsnorm(x, *final_norm, eps) : x;
}
