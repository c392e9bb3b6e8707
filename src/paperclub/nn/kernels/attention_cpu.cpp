// Batch-invariant attention over a slot KV cache for x86 CPUs with AVX-512.
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

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(uint16_t* p, __m512 v) {
  alignas(64) float tmp[16];
  _mm512_store_ps(tmp, v);
  for (int i = 0; i < 16; ++i) p[i] = c10::BFloat16(tmp[i]).x;
}

template <typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* slots, const bool* mask, T* out, int64_t B,
            int64_t Tq, int64_t H, int64_t Hkv, int64_t D, int64_t cap, int64_t S, float scale) {
  const int64_t G = H / Hkv, nvec = D / 16;
  at::parallel_for(0, B * Tq * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> score(S);
    std::vector<__m512> acc(nvec), qv(nvec);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / (Tq * H), t = (i / H) % Tq, h = i % H, hk = h / G;
      const T* qi = q + ((b * Tq + t) * H + h) * D;
      const T* K = kc + (slots[b] * Hkv + hk) * cap * D;
      const T* V = vc + (slots[b] * Hkv + hk) * cap * D;
      const bool* m = mask ? mask + (b * Tq + t) * S : nullptr;
      for (int64_t d = 0; d < nvec; ++d) qv[d] = load16(qi + 16 * d);
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < S; ++s) {
        if (m && !m[s]) { score[s] = -std::numeric_limits<float>::infinity(); continue; }
        __m512 dot = _mm512_setzero_ps();
        for (int64_t d = 0; d < nvec; ++d) dot = _mm512_fmadd_ps(qv[d], load16(K + s * D + 16 * d), dot);
        score[s] = _mm512_reduce_add_ps(dot) * scale;
        mx = std::max(mx, score[s]);
      }
      float sum = 0.f;
      for (int64_t d = 0; d < nvec; ++d) acc[d] = _mm512_setzero_ps();
      for (int64_t s = 0; s < S; ++s) {
        if (score[s] == -std::numeric_limits<float>::infinity()) continue;
        const float p = std::exp(score[s] - mx);
        sum += p;
        const __m512 pv = _mm512_set1_ps(p);
        for (int64_t d = 0; d < nvec; ++d) acc[d] = _mm512_fmadd_ps(pv, load16(V + s * D + 16 * d), acc[d]);
      }
      const __m512 inv = _mm512_set1_ps(sum > 0.f ? 1.f / sum : 0.f);
      T* o = out + ((b * Tq + t) * H + h) * D;
      for (int64_t d = 0; d < nvec; ++d) store16(o + 16 * d, _mm512_mul_ps(acc[d], inv));
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
