// Batch-invariant attention over a slot KV cache for x86 CPUs: 8-lane AVX2+FMA code, the same source in every
// build (see cpu_kernels.py).
//
// Every (row b, query t, head h) is computed on its own, in one fixed order: scores over the visible cache
// entries left to right, softmax with one running sum, values accumulated left to right. The result for a
// query therefore does not depend on how many other queries or rows share the call (decode, K+1-token
// verification, branch decoding, batch 1 or 16 all give the same bits). K/V are read from the cache slot in
// place: no gather, no padding to a common length beyond the mask; bf16 ones are widened to float32 once per KV
// head and shared by the query heads of its GQA group. Four score chains, that sharing and a vector e^x together,
// on a 2-core Ice Lake Xeon with SmolLM2-135M's heads (9 query, 3 KV), 16 rows, one layer, three runs against
// the one-head-per-task version: 100 keys 272-317 -> 195-270 us, 300 keys 718-915 -> 565-571 us; one row alike.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec_avx2.h"

namespace {

constexpr int64_t kQueryBlock = 8;  // queries of one row per task: they share the widened keys and values

// keys or values [0, n) of one cache slot and head as float32 (bf16 widens exactly; float32 is used in place).
inline const float* as_float(const float* p, int64_t, std::vector<float>&) { return p; }
inline const float* as_float(const uint16_t* p, int64_t n, std::vector<float>& buf) {
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(buf.data() + i, load8(p + i));
  return buf.data();
}

// NV = D / 8 vectors per head, a compile-time constant so that a query and its output accumulators live in
// registers (with a run-time count they went through memory: a store-to-load chain per key in the value sum).
// Row b's queries are q rows [cu[b], cu[b + 1]) (at most Tq of them; the mask has Tq per row).
template <int NV, typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* slots, const int64_t* cu, const bool* mask, T* out,
            int64_t B, int64_t Tq, int64_t H, int64_t Hkv, int64_t cap, int64_t S, float scale) {
  constexpr int64_t nvec = NV, D = 8 * NV;
  const int64_t G = H / Hkv, S8 = (S + 7) / 8 * 8;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // One task per (row, KV head, block of up to kQueryBlock queries): the G query heads that share a KV head (GQA)
  // and the queries of the block (verification, branch decoding, prefill) read its keys and values widened to
  // float32 once.
  const int64_t blocks = (Tq + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, B * Hkv * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> score(S8), kbuf(std::is_same_v<T, float> ? 0 : S * D), vbuf(kbuf.size());
    __m256 acc[NV], qv[NV];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / (Hkv * blocks), hk = (i / blocks) % Hkv, t0 = (i % blocks) * kQueryBlock;
      const int64_t nq = cu[b + 1] - cu[b];
      if (t0 >= nq) continue;  // a short row of a ragged batch
      const float* K = as_float(kc + (slots[b] * Hkv + hk) * cap * D, S * D, kbuf);
      const float* V = as_float(vc + (slots[b] * Hkv + hk) * cap * D, S * D, vbuf);
      for (int64_t t = t0; t < std::min(nq, t0 + kQueryBlock); ++t) {
        const bool* m = mask ? mask + (b * Tq + t) * S : nullptr;
        for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
          const T* qi = q + ((cu[b] + t) * H + h) * D;
          for (int64_t d = 0; d < nvec; ++d) qv[d] = load8(qi + 8 * d);
          // Scores four keys at a time: four independent multiply-add chains instead of one, each key's sum in
          // the same order as alone.
          int64_t s = 0;
          for (; s + 4 <= S; s += 4) {
            const float* k0 = K + s * D;
            __m256 d0 = _mm256_setzero_ps(), d1 = d0, d2 = d0, d3 = d0;
            for (int64_t d = 0; d < nvec; ++d) {
              d0 = _mm256_fmadd_ps(qv[d], load8(k0 + 8 * d), d0);
              d1 = _mm256_fmadd_ps(qv[d], load8(k0 + D + 8 * d), d1);
              d2 = _mm256_fmadd_ps(qv[d], load8(k0 + 2 * D + 8 * d), d2);
              d3 = _mm256_fmadd_ps(qv[d], load8(k0 + 3 * D + 8 * d), d3);
            }
            score[s] = reduce8(d0) * scale;
            score[s + 1] = reduce8(d1) * scale;
            score[s + 2] = reduce8(d2) * scale;
            score[s + 3] = reduce8(d3) * scale;
          }
          for (; s < S; ++s) {
            __m256 dot = _mm256_setzero_ps();
            for (int64_t d = 0; d < nvec; ++d) dot = _mm256_fmadd_ps(qv[d], load8(K + s * D + 8 * d), dot);
            score[s] = reduce8(dot) * scale;
          }
          float mx = kNegInf;
          for (s = 0; s < S8; ++s) {  // masked entries were scored too (stale cache slots, maybe): drop them
            if (s >= S || (m && !m[s])) score[s] = kNegInf;
            mx = std::max(mx, score[s]);
          }
          const __m256 vmx = _mm256_set1_ps(mx);
          for (s = 0; s < S8; s += 8) store8(score.data() + s, exp8(_mm256_sub_ps(load8(score.data() + s), vmx)));
          float sum = 0.f;
          for (int64_t d = 0; d < nvec; ++d) acc[d] = _mm256_setzero_ps();
          for (s = 0; s < S; ++s) {
            if (m && !m[s]) continue;
            const float p = score[s];
            sum += p;
            const __m256 pv = _mm256_set1_ps(p);
            for (int64_t d = 0; d < nvec; ++d) acc[d] = _mm256_fmadd_ps(pv, load8(V + s * D + 8 * d), acc[d]);
          }
          const __m256 inv = _mm256_set1_ps(sum > 0.f ? 1.f / sum : 0.f);
          T* o = out + ((cu[b] + t) * H + h) * D;
          for (int64_t d = 0; d < nvec; ++d) store8(o + 8 * d, _mm256_mul_ps(acc[d], inv));
        }
      }
    }
  });
}

// attend<D / 8> for head sizes 16, 32, ..., 256.
template <typename T, int NV = 2>
void attend_d(int64_t D, const T* q, const T* kc, const T* vc, const int64_t* slots, const int64_t* cu,
              const bool* mask, T* out, int64_t B, int64_t Tq, int64_t H, int64_t Hkv, int64_t cap, int64_t S,
              float scale) {
  if constexpr (NV <= 32) {
    if (D == 8 * NV) return attend<NV, T>(q, kc, vc, slots, cu, mask, out, B, Tq, H, Hkv, cap, S, scale);
    attend_d<T, NV + 2>(D, q, kc, vc, slots, cu, mask, out, B, Tq, H, Hkv, cap, S, scale);
  } else {
    TORCH_CHECK(false, "attention: head size ", D, " is not one of 16, 32, ..., 256");
  }
}

}  // namespace

// q: (B, T, H, D), or (N, H, D) with cu_seqlens (B + 1,): the queries of a ragged batch packed row after row, row
// b's at [cu_seqlens[b], cu_seqlens[b + 1]) (no padding rows to compute). k_cache, v_cache: (slots, Hkv, cap, D);
// slots: (B,) int64; mask: (B, T, S) bool or None, T = the longest row. The output has q's shape.
torch::Tensor attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                        int64_t S, c10::optional<torch::Tensor> mask_opt, double scale,
                        c10::optional<torch::Tensor> cu_seqlens) {
  const bool ragged = cu_seqlens.has_value() && cu_seqlens->defined();
  TORCH_CHECK(q.dim() == (ragged ? 3 : 4) && k_cache.dim() == 4 && q.scalar_type() == k_cache.scalar_type(),
              "attention: shapes");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(), "attention: layout");
  const int64_t B = slots.numel(), H = q.size(-2), D = q.size(-1);
  const int64_t Hkv = k_cache.size(1), cap = k_cache.size(2);
  TORCH_CHECK(D % 16 == 0 && D <= 256 && H % Hkv == 0 && S <= cap, "attention: unsupported head layout");
  std::vector<int64_t> cu(B + 1);
  int64_t Tq = 0;
  if (ragged) {
    auto c = cu_seqlens->to(torch::kInt64).contiguous();
    TORCH_CHECK(c.numel() == B + 1, "attention: cu_seqlens must have one entry per row, plus one");
    std::copy(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + B + 1, cu.begin());
    TORCH_CHECK(cu[0] == 0 && cu[B] == q.size(0), "attention: cu_seqlens must run from 0 to the number of queries");
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(cu[b + 1] >= cu[b], "attention: cu_seqlens must not decrease");
      Tq = std::max(Tq, cu[b + 1] - cu[b]);
    }
  } else {
    TORCH_CHECK(q.size(0) == B, "attention: one slot per row");
    Tq = q.size(1);
    for (int64_t b = 0; b <= B; ++b) cu[b] = b * Tq;
  }
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
    attend_d<uint16_t>(D, reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>()),
                       reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>()),
                       reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>()),
                       slots_c.data_ptr<int64_t>(), cu.data(), mp,
                       reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), B, Tq, H, Hkv, cap, S, (float)scale);
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kFloat32, "attention: bf16 or fp32");
    attend_d<float>(D, q.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
                    slots_c.data_ptr<int64_t>(), cu.data(), mp, out.data_ptr<float>(), B, Tq, H, Hkv, cap, S,
                    (float)scale);
  }
  return out;
}
