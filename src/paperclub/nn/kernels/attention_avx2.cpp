// Batch-invariant attention over a slot KV cache for x86 CPUs with AVX2 and FMA: the AVX2 build's counterpart of
// `attention_cpu.cpp`, the same algorithm on 8-lane vectors.
//
// Every (row b, query t, head h) is computed on its own, in one fixed order: scores over the visible cache
// entries left to right, softmax with one running sum, values accumulated left to right. The result for a
// query therefore does not depend on how many other queries or rows share the call (decode, K+1-token
// verification, branch decoding, batch 1 or 16 all give the same bits), and K/V are read straight from the
// cache slot: no gather, no GQA copy, no padding to a common length beyond the mask.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <limits>
#include <vector>

namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(uint16_t* p, __m256 v) {
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, v);
  for (int i = 0; i < 8; ++i) p[i] = c10::BFloat16(tmp[i]).x;
}

// The sum of v's 8 lanes in one fixed tree: t[i] = v[i] + v[i+4], then (t0 + t2) + (t1 + t3).
inline float reduce8(__m256 v) {
  const __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t));
  return _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)));
}

template <typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* slots, const bool* mask, T* out, int64_t B,
            int64_t Tq, int64_t H, int64_t Hkv, int64_t D, int64_t cap, int64_t S, float scale) {
  const int64_t G = H / Hkv, nvec = D / 8;
  at::parallel_for(0, B * Tq * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> score(S);
    std::vector<__m256> acc(nvec), qv(nvec);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / (Tq * H), t = (i / H) % Tq, h = i % H, hk = h / G;
      const T* qi = q + ((b * Tq + t) * H + h) * D;
      const T* K = kc + (slots[b] * Hkv + hk) * cap * D;
      const T* V = vc + (slots[b] * Hkv + hk) * cap * D;
      const bool* m = mask ? mask + (b * Tq + t) * S : nullptr;
      for (int64_t d = 0; d < nvec; ++d) qv[d] = load8(qi + 8 * d);
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < S; ++s) {
        if (m && !m[s]) { score[s] = -std::numeric_limits<float>::infinity(); continue; }
        __m256 dot = _mm256_setzero_ps();
        for (int64_t d = 0; d < nvec; ++d) dot = _mm256_fmadd_ps(qv[d], load8(K + s * D + 8 * d), dot);
        score[s] = reduce8(dot) * scale;
        mx = std::max(mx, score[s]);
      }
      float sum = 0.f;
      for (int64_t d = 0; d < nvec; ++d) acc[d] = _mm256_setzero_ps();
      for (int64_t s = 0; s < S; ++s) {
        if (score[s] == -std::numeric_limits<float>::infinity()) continue;
        const float p = std::exp(score[s] - mx);
        sum += p;
        const __m256 pv = _mm256_set1_ps(p);
        for (int64_t d = 0; d < nvec; ++d) acc[d] = _mm256_fmadd_ps(pv, load8(V + s * D + 8 * d), acc[d]);
      }
      const __m256 inv = _mm256_set1_ps(sum > 0.f ? 1.f / sum : 0.f);
      T* o = out + ((b * Tq + t) * H + h) * D;
      for (int64_t d = 0; d < nvec; ++d) store8(o + 8 * d, _mm256_mul_ps(acc[d], inv));
    }
  });
}

}  // namespace

// q: (B, T, H, D); k_cache, v_cache: (slots, Hkv, cap, D); slots: (B,) int64; mask: (B, T, S) bool or None.
torch::Tensor attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                        int64_t S, c10::optional<torch::Tensor> mask_opt, double scale) {
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4 && q.scalar_type() == k_cache.scalar_type(), "attention: shapes");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(), "attention: layout");
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Hkv = k_cache.size(1), cap = k_cache.size(2);
  TORCH_CHECK(D % 16 == 0 && H % Hkv == 0 && S <= cap, "attention: unsupported head layout");
  auto slots_c = slots.to(torch::kInt64).contiguous();
  torch::Tensor mask;
  const bool* mp = nullptr;
  if (mask_opt.has_value() && mask_opt->defined()) {
    mask = mask_opt->to(torch::kBool).contiguous();
    TORCH_CHECK(mask.numel() == B * Tq * S, "attention: mask must be (B, T, S)");
    mp = mask.data_ptr<bool>();
  }
  auto out = torch::empty_like(q);
  if (q.scalar_type() == torch::kBFloat16) {
    attend<uint16_t>(reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>()),
                     reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>()),
                     reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>()), slots_c.data_ptr<int64_t>(),
                     mp, reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), B, Tq, H, Hkv, D, cap, S,
                     (float)scale);
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kFloat32, "attention: bf16 or fp32");
    attend<float>(q.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
                  slots_c.data_ptr<int64_t>(), mp, out.data_ptr<float>(), B, Tq, H, Hkv, D, cap, S, (float)scale);
  }
  return out;
}
