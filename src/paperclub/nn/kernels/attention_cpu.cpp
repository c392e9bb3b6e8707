// Batch-invariant attention over a slot KV cache for x86 CPUs, the same source in every build (see cpu_kernels.py):
// AVX-512 builds read K and V in 16-lane registers, AVX2 builds through an 8-lane float32 buffer.
//
// Every (row b, query t, head h) is computed on its own, in one fixed order. The visible cache entries are cut
// into chunks of kKeyChunk keys at fixed positions (0-127, 128-255, ...). In each chunk: every key's score (a dot
// product in a fixed tree), the chunk's max, e^(score - max) and their sum (a fixed tree), values accumulated left
// to right. The chunks' results are then merged in chunk order (the log-sum-exp rescaling of flash-decoding,
// which lets one query's chunks run on different threads). Nothing of this depends on how many other
// queries or rows share the call, so decode, K+1-token verification, branch decoding, batch 1 or 16 all give the
// same bits. Which thread computes a chunk does depend on it: with few (row, KV head) pairs (batch-1 decode has 3)
// the chunks of one query are spread over the threads and merged afterwards; with many, one task runs its chunks
// one after the other and merges as it goes. Both merge the same partial results in the same order.
//
// K/V are read from the cache slot in place: no gather, no padding to a common length beyond the mask. With
// AVX-512 a key is loaded once for all the query heads of its GQA group (up to kMaxHeadGroup at a time) and
// widened from bf16 in registers. AVX2 has 16 vector registers, too few for that: its build widens a chunk of K/V
// to float32 in a buffer (it stays in L1/L2) shared by the group's heads. The two builds sum in different orders,
// so their results differ in the last bits; each is batch-invariant. Measured on a 2-core Ice Lake Xeon (bf16,
// SmolLM2-135M's 9 query and 3 KV heads), the register path against the buffer one: half the time per layer at
// batch 1 and 16 (BENCHMARKS.md).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec_avx2.h"

namespace {

constexpr int64_t kQueryBlock = 8;  // queries of one row per task (AVX2: they share the widened K/V)
constexpr int64_t kKeyChunk = 128;  // keys per chunk (fixed positions: part of the arithmetic, see the top)
constexpr int kMaxHeadGroup = 3;    // query heads run together by the AVX-512 path (SmolLM2's GQA groups are 3)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Keys or values [0, n) of one cache slot and head as float32 in `buf` (bf16 widens exactly), zero rows added up to
// a multiple of 8 keys: the scores are computed 8 keys at a time.
template <typename T>
inline const float* as_float(const T* p, int64_t n, int64_t D, std::vector<float>& buf) {
  const int64_t n8 = (n + 7) / 8 * 8;
  float* dst = buf.data();  // (a local: through buf.data() every store could move the vector's own pointer)
  for (int64_t i = 0; i < n * D; i += 8) store8(dst + i, load8(p + i));
  std::fill(dst + n * D, dst + n8 * D, 0.f);
  return dst;
}

inline float exp1(float x) { return _mm_cvtss_f32(_mm256_castps256_ps128(exp8(_mm256_set1_ps(x)))); }

// Lane j: the sum of d[j]'s 8 lanes, ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) for every j.
inline __m256 sum8x8(const __m256 (&d)[8]) {
  const __m256 t0 = _mm256_hadd_ps(d[0], d[1]), t1 = _mm256_hadd_ps(d[2], d[3]);
  const __m256 t2 = _mm256_hadd_ps(d[4], d[5]), t3 = _mm256_hadd_ps(d[6], d[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // per 128-bit half: keys 0-3 | 4-7
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// 8 lanes: which of keys [s, s + 8) the query sees (all ones) and which it does not (zero).
inline __m256 visible8(const bool* m, int64_t s, int64_t n) {
  if (s + 8 <= n) {
    if (!m) return _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int64_t bytes;  // 8 mask bytes (bool is one byte, 0 or 1) -> 8 lanes
    std::memcpy(&bytes, m + s, 8);
    const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(v, _mm256_setzero_si256()));
  }
  alignas(32) int32_t v[8];
  for (int j = 0; j < 8; ++j) v[j] = s + j < n && (!m || m[s + j]) ? -1 : 0;
  return _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(v)));
}

// A chunk's n8 scores (-inf where masked; vmax: their lane-wise max) become e^(score - mx) in place, masked ones
// exactly 0 (e^x of -inf would be ~1e-38); returns mx and their sum in a fixed tree. mx is -inf, and every weight
// 0, when the query sees no key of the chunk.
inline float softmax_weights(float* score, int64_t n8, __m256 vmax, float& sum) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  const float mx = *std::max_element(lanes, lanes + 8);  // exact whatever the order
  sum = 0.f;
  if (mx == kNegInf) {
    std::fill(score, score + n8, 0.f);
    return mx;
  }
  const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(kNegInf);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t s = 0; s < n8; s += 8) {
    const __m256 sc = load8(score + s);
    const __m256 p = _mm256_and_ps(exp8(_mm256_sub_ps(sc, vmx)), _mm256_cmp_ps(sc, ninf, _CMP_NEQ_OQ));
    store8(score + s, p);
    vsum = _mm256_add_ps(vsum, p);
  }
  sum = reduce8(vsum);
  return mx;
}

// One query head against the n keys of a chunk (K, V: float32, row-major, K zero-padded to a multiple of 8 keys;
// mask row m or null): the chunk's max score mx (-inf when it sees no key), sum = sum_s e^(score_s - mx) and
// acc = sum_s e^(score_s - mx) v_s, over the visible keys. Each key's score, and every sum, in a fixed order.
template <int NV>
inline void chunk_attend(const __m256 (&qv)[NV], const float* K, const float* V, int64_t n, const bool* m,
                         float scale, float* score, float& mx, float& sum, __m256 (&acc)[NV]) {
  constexpr int64_t D = 8 * NV;
  const int64_t n8 = (n + 7) / 8 * 8;
  const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(kNegInf);
  __m256 vmax = ninf;
  for (int64_t s = 0; s < n8; s += 8) {  // 8 keys: 8 independent multiply-add chains, one transposing reduction
    const float* k0 = K + s * D;
    __m256 d[8];
    for (int j = 0; j < 8; ++j) d[j] = _mm256_setzero_ps();
    for (int v = 0; v < NV; ++v)
      for (int j = 0; j < 8; ++j) d[j] = _mm256_fmadd_ps(qv[v], load8(k0 + j * D + 8 * v), d[j]);
    const __m256 sc = _mm256_blendv_ps(ninf, _mm256_mul_ps(sum8x8(d), vscale), visible8(m, s, n));
    store8(score + s, sc);
    vmax = _mm256_max_ps(vmax, sc);
  }
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
  mx = softmax_weights(score, n8, vmax, sum);
  if (mx == kNegInf) return;
  for (int64_t s = 0; s < n; ++s) {
    const float p = score[s];
    if (p == 0.f) continue;  // not visible (so a stale, never-written cache entry cannot reach the output)
    const __m256 pv = _mm256_set1_ps(p);
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(pv, load8(V + s * D + 8 * v), acc[v]);
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
// AVX-512 builds read K and V straight from the cache, bf16 widened in registers, and run a query's heads of one
// KV head together: every key is loaded and widened once for up to kHeadGroup<NZ> heads instead of going through a
// float32 copy of the chunk (the copy was about 40% of the kernel's time at batch 16). NZ = D / 16 vectors a row.
constexpr bool kHeadsInRegisters = true;
template <int NZ>  // 8 keys x heads accumulators + one key's NZ vectors: at most 32 zmm
constexpr int kHeadGroup = NZ <= 4 ? kMaxHeadGroup : NZ <= 8 ? 2 : 1;

inline __m512 value_row16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 value_row16(const uint16_t* p) {  // 16 bf16 values in order, widened exactly
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
// A key (or query) row as NZ float32 vectors, in an order shared by every row, so that a dot product can use it:
// bf16 rows of a multiple of 32 widen by interleaving with zeros (one instruction per 16 values, the lanes of each
// 128-bit quarter split into its low and high four); other rows load in order.
template <int NZ>
inline void dot_row(const float* p, __m512 (&r)[NZ]) {
  for (int v = 0; v < NZ; ++v) r[v] = _mm512_loadu_ps(p + 16 * v);
}
template <int NZ>
inline void dot_row(const uint16_t* p, __m512 (&r)[NZ]) {
  if constexpr (NZ % 2 == 0) {
    for (int v = 0; v < NZ; v += 2) {
      const __m512i raw = _mm512_loadu_si512(p + 16 * v);
      r[v] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), raw));
      r[v + 1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), raw));
    }
  } else {
    for (int v = 0; v < NZ; ++v) r[v] = value_row16(p + 16 * v);
  }
}
inline __m256 fold16(__m512 v) {  // lanes i + (i + 8): 16 partial sums -> 8
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// QH query heads (rows of q, D apart) against the n keys of a chunk read in place from the cache (K, V: row-major,
// D apart; mask row m or null): for each head what chunk_attend gives, in the same fixed order for every head and
// whatever else shares the call: a key's score is 16 lane-wise multiply-add chains over its row, folded to 8, then
// the same transposing tree as chunk_attend; the values are summed left to right over the visible keys.
template <int NZ, int QH, typename T>
inline void heads_attend(const T* q, const T* K, const T* V, int64_t n, const bool* m, float scale, float* score,
                         float (&mx)[QH], float (&sum)[QH], __m256 (&acc)[QH][2 * NZ]) {
  constexpr int64_t D = 16 * NZ;
  alignas(64) static const T zero_row[D] = {};  // stands in for the keys past n of the last 8
  const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(kNegInf);
  __m512 qv[QH][NZ];
  for (int g = 0; g < QH; ++g) dot_row<NZ>(q + g * D, qv[g]);
  __m256 vmax[QH];
  for (int g = 0; g < QH; ++g) vmax[g] = ninf;
  const int64_t n8 = (n + 7) / 8 * 8;
  for (int64_t s = 0; s < n8; s += 8) {
    __m512 d[QH][8];
    for (int j = 0; j < 8; ++j) {
      __m512 kv[NZ];
      dot_row<NZ>(s + j < n ? K + (s + j) * D : zero_row, kv);
      for (int g = 0; g < QH; ++g) {
        d[g][j] = _mm512_mul_ps(qv[g][0], kv[0]);
        for (int v = 1; v < NZ; ++v) d[g][j] = _mm512_fmadd_ps(qv[g][v], kv[v], d[g][j]);
      }
    }
    const __m256 vis = visible8(m, s, n);
    for (int g = 0; g < QH; ++g) {
      __m256 h[8];
      for (int j = 0; j < 8; ++j) h[j] = fold16(d[g][j]);
      const __m256 sc = _mm256_blendv_ps(ninf, _mm256_mul_ps(sum8x8(h), vscale), vis);
      store8(score + g * kKeyChunk + s, sc);
      vmax[g] = _mm256_max_ps(vmax[g], sc);
    }
  }
  bool any = false;
  for (int g = 0; g < QH; ++g) {
    mx[g] = softmax_weights(score + g * kKeyChunk, n8, vmax[g], sum[g]);
    any |= mx[g] != kNegInf;
  }
  __m512 a[QH][NZ];
  for (int g = 0; g < QH; ++g)
    for (int v = 0; v < NZ; ++v) a[g][v] = _mm512_setzero_ps();
  if (any) {
    for (int64_t s = 0; s < n; ++s) {
      if (m && !m[s]) continue;  // not visible (so a stale, never-written cache entry cannot reach the output)
      __m512 vv[NZ];
      for (int v = 0; v < NZ; ++v) vv[v] = value_row16(V + s * D + 16 * v);
      for (int g = 0; g < QH; ++g) {
        const __m512 pv = _mm512_set1_ps(score[g * kKeyChunk + s]);
        for (int v = 0; v < NZ; ++v) a[g][v] = _mm512_fmadd_ps(pv, vv[v], a[g][v]);
      }
    }
  }
  for (int g = 0; g < QH; ++g)
    for (int v = 0; v < NZ; ++v) {
      acc[g][2 * v] = _mm512_castps512_ps256(a[g][v]);
      acc[g][2 * v + 1] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[g][v]), 1));
    }
}
#else
constexpr bool kHeadsInRegisters = false;  // AVX2: 16 registers; keys and values widened to a float32 buffer
#endif

// What a query head has seen so far, in memory: [max, sum, acc (D floats)]. Starts as {-inf, 0, 0...}; merging a
// chunk rescales both sides to the larger max. A first visible chunk is taken as it is (no rescaling), so a
// context of one chunk gives exactly the single-pass softmax.
template <int NV>
inline void merge(float* state, float mx, float sum, const __m256 (&acc)[NV]) {
  if (mx == kNegInf) return;  // the chunk sees no key
  float* a = state + 2;
  if (state[0] == kNegInf) {
    state[0] = mx, state[1] = sum;
    for (int d = 0; d < NV; ++d) _mm256_storeu_ps(a + 8 * d, acc[d]);
    return;
  }
  const float m = std::max(state[0], mx), old = exp1(state[0] - m), add = exp1(mx - m);
  const __m256 vo = _mm256_set1_ps(old), va = _mm256_set1_ps(add);
  for (int d = 0; d < NV; ++d)
    _mm256_storeu_ps(a + 8 * d, _mm256_fmadd_ps(acc[d], va, _mm256_mul_ps(_mm256_loadu_ps(a + 8 * d), vo)));
  state[0] = m, state[1] = state[1] * old + sum * add;
}

template <int NV, typename T>
inline void finish(const float* state, T* o) {
  const __m256 inv = _mm256_set1_ps(state[1] > 0.f ? 1.f / state[1] : 0.f);
  for (int d = 0; d < NV; ++d) store8(o + 8 * d, _mm256_mul_ps(_mm256_loadu_ps(state + 2 + 8 * d), inv));
}

// NV = D / 8 vectors per head, a compile-time constant so that a query and its output accumulators live in
// registers (with a run-time count they went through memory: a store-to-load chain per key in the value sum).
// Row b's queries are q rows [cu[b], cu[b + 1]) (at most Tq of them; the mask has Tq per row).
template <int NV, typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* slots, const int64_t* cu, const bool* mask, T* out,
            int64_t B, int64_t Tq, int64_t H, int64_t Hkv, int64_t cap, int64_t S, float scale) {
  constexpr int64_t D = 8 * NV, kState = D + 2;
  const int64_t G = H / Hkv, blocks = (Tq + kQueryBlock - 1) / kQueryBlock, chunks = (S + kKeyChunk - 1) / kKeyChunk;
  // A unit: one row, one KV head, a block of up to kQueryBlock queries, i.e. G * kQueryBlock query heads that read
  // the same keys and values.
  const int64_t units = B * Hkv * blocks, per_unit = kQueryBlock * G;
  const bool spread = chunks > 1 && units < 4 * at::get_num_threads();
  std::vector<float> partial(spread ? units * chunks * per_unit * kState : 0);
  // Queries whose visible keys are not one run from position 0 (a token tree: the prefix, then a node's
  // ancestors, with other branches' nodes between them) are cut into chunks by visible ordinal, not position:
  // chunk c holds their visible keys number 128c .. 128c + 127, gathered into one run where they have gaps. So a
  // node sees its keys in the chunks, order and lanes that the same keys laid out contiguously give (a plain
  // decode of that path): tree verification gives the same bits as decoding the accepted path one token at a time.
  std::vector<std::vector<int32_t>> gapped(mask ? B * Tq : 0);
  if (mask) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < cu[b + 1] - cu[b]; ++t) {
        const bool* m = mask + (b * Tq + t) * S;
        const int64_t run = std::find(m, m + S, false) - m;
        // one run from 0 (causal): positions are ordinals; none from 0 (a sliding window): chunks by position
        if (run == 0 || std::find(m + run, m + S, true) == m + S) continue;
        auto& list = gapped[b * Tq + t];
        for (int64_t i = 0; i < S; ++i)
          if (m[i]) list.push_back((int32_t)i);
      }
  }

  // The G heads of one query and KV head against one chunk, kHeadGroup at a time; head g's result to emit(j0 + g).
  auto heads_in_registers = [&](const T* qh, const T* K, const T* V, int64_t n, const bool* m, float* score,
                                int64_t j0, auto&& emit) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    constexpr int NZ = NV / 2, QH = kHeadGroup<NZ>;
    auto run = [&](auto heads, int64_t h0) {
      constexpr int R = decltype(heads)::value;
      float mx[R], sum[R];
      __m256 acc[R][NV];
      heads_attend<NZ, R>(qh + h0 * D, K, V, n, m, scale, score, mx, sum, acc);
      for (int g = 0; g < R; ++g) emit(j0 + h0 + g, mx[g], sum[g], acc[g]);
    };
    int64_t h0 = 0;
    for (; h0 + QH <= G; h0 += QH) run(std::integral_constant<int, QH>{}, h0);
    if constexpr (QH > 2) {
      if (G - h0 == 2) run(std::integral_constant<int, 2>{}, h0), h0 += 2;
    }
    if (h0 < G) run(std::integral_constant<int, 1>{}, h0);
#endif
  };
  // Chunk c of a unit: every query head's partial result goes to emit(j, mx, sum, acc), j = its index in the unit.
  auto run_chunk = [&](int64_t u, int64_t c, std::vector<float>& kbuf, std::vector<float>& vbuf,
                       std::vector<float>& score, std::vector<T>& gk, std::vector<T>& gv, auto&& emit) {
    const int64_t b = u / (Hkv * blocks), hk = (u / blocks) % Hkv, t0 = (u % blocks) * kQueryBlock;
    const int64_t nq = cu[b + 1] - cu[b], c0 = c * kKeyChunk, n = std::min(S, c0 + kKeyChunk) - c0;
    if (t0 >= nq) return false;  // a short row of a ragged batch
    const int64_t base = ((slots[b] * Hkv + hk) * cap + c0) * D;
    const float* K = nullptr;
    const float* V = nullptr;
    __m256 qv[NV], acc[NV];
    for (int d = 0; d < NV; ++d) acc[d] = _mm256_setzero_ps();
    for (int64_t t = t0; t < std::min(nq, t0 + kQueryBlock); ++t) {
      // Query t's G heads against nk keys: T rows read in place (AVX-512) or their float32 copies (AVX2).
      auto heads = [&](const T* Kt, const T* Vt, const float* Kf, const float* Vf, int64_t nk, const bool* mk) {
        if constexpr (kHeadsInRegisters) {
          heads_in_registers(q + ((cu[b] + t) * H + hk * G) * D, Kt, Vt, nk, mk, score.data(), (t - t0) * G, emit);
        } else {
          for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
            const T* qi = q + ((cu[b] + t) * H + h) * D;
            for (int d = 0; d < NV; ++d) qv[d] = load8(qi + 8 * d);
            float mx, sum;
            chunk_attend<NV>(qv, Kf, Vf, nk, mk, scale, score.data(), mx, sum, acc);
            emit((t - t0) * G + h - hk * G, mx, sum, acc);
          }
        }
      };
      if (mask && !gapped[b * Tq + t].empty()) {  // chunk c = visible keys 128c .. 128c + 127, in one run
        const auto& list = gapped[b * Tq + t];
        const int64_t lo = c * kKeyChunk, hi = std::min<int64_t>(list.size(), lo + kKeyChunk), nv = hi - lo;
        if (nv <= 0) {
          for (int64_t h = 0; h < G; ++h) emit((t - t0) * G + h, kNegInf, 0.f, acc);
          continue;
        }
        const int64_t row0 = (slots[b] * Hkv + hk) * cap;
        const T* Kg = kc + (row0 + list[lo]) * D;
        const T* Vg = vc + (row0 + list[lo]) * D;
        if (list[hi - 1] - list[lo] != nv - 1) {  // gaps: gather the visible rows
          for (int64_t i = 0; i < nv; ++i) {
            std::copy(kc + (row0 + list[lo + i]) * D, kc + (row0 + list[lo + i] + 1) * D, gk.data() + i * D);
            std::copy(vc + (row0 + list[lo + i]) * D, vc + (row0 + list[lo + i] + 1) * D, gv.data() + i * D);
          }
          Kg = gk.data(), Vg = gv.data();
        }
        if constexpr (kHeadsInRegisters) {
          heads(Kg, Vg, nullptr, nullptr, nv, nullptr);
        } else {
          heads(Kg, Vg, as_float(Kg, nv, D, kbuf), as_float(Vg, nv, D, vbuf), nv, nullptr);
          K = V = nullptr;  // the buffers no longer hold the unit's chunk
        }
        continue;
      }
      const bool* m = mask ? mask + (b * Tq + t) * S + c0 : nullptr;
      if (m && std::find(m, m + n, true) == m + n) {  // the query sees nothing here (causal prefill, a tree mask)
        for (int64_t h = 0; h < G; ++h) emit((t - t0) * G + h, kNegInf, 0.f, acc);
        continue;
      }
      if constexpr (!kHeadsInRegisters) {
        if (!K) K = as_float(kc + base, n, D, kbuf), V = as_float(vc + base, n, D, vbuf);
      }
      heads(kc + base, vc + base, K, V, n, m);
    }
    return true;
  };
  auto out_of = [&](int64_t u, int64_t j) {  // where query head j of unit u writes
    const int64_t b = u / (Hkv * blocks), hk = (u / blocks) % Hkv, t = (u % blocks) * kQueryBlock + j / G;
    return out + ((cu[b] + t) * H + hk * G + j % G) * D;
  };
  auto queries_of = [&](int64_t u) {
    const int64_t b = u / (Hkv * blocks), t0 = (u % blocks) * kQueryBlock;
    return std::max<int64_t>(0, std::min(kQueryBlock, cu[b + 1] - cu[b] - t0)) * G;
  };
  auto reset = [&](float* st, int64_t n) {
    for (int64_t j = 0; j < n; ++j) std::fill(st + j * kState, st + (j + 1) * kState, 0.f), st[j * kState] = kNegInf;
  };
  // A chunk's scores (one chunk per head of a group in the register path, which needs no key or value buffers)
  const int64_t cs = kHeadsInRegisters ? kMaxHeadGroup * kKeyChunk : (std::min(S, kKeyChunk) + 7) / 8 * 8;
  const int64_t kb = kHeadsInRegisters ? 0 : cs * D;
  if (!spread) {  // one task per unit: its chunks in order, merged as they come
    // A unit computes its chunks up to the last one that any of its queries sees (the rest would merge nothing).
    // Rows of a batch differ in context length (prompts of 37 and 321 tokens decoded together), so the threads
    // take contiguous ranges of units holding about the same number of chunks, not the same number of units.
    std::vector<int64_t> work(units + 1, 0);  // work[u + 1] - work[u]: the chunks unit u computes
    for (int64_t u = 0; u < units; ++u) {
      int64_t need = chunks;
      if (mask) {
        const int64_t b = u / (Hkv * blocks), t0 = (u % blocks) * kQueryBlock, nq = cu[b + 1] - cu[b];
        int64_t last = -1;
        for (int64_t t = t0; t < std::min(nq, t0 + kQueryBlock); ++t) {
          const bool* m = mask + (b * Tq + t) * S;
          int64_t i = S - 1;
          while (i > last && !m[i]) --i;
          last = std::max(last, i);
        }
        need = last < 0 ? 0 : last / kKeyChunk + 1;
      }
      work[u + 1] = work[u] + need + 1;  // (+1: a unit costs something even when it sees nothing)
    }
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), units);
    at::parallel_for(0, threads, 1, [&](int64_t t_begin, int64_t t_end) {
      std::vector<float> kbuf(kb), vbuf(kb), score(cs), state(per_unit * kState);
      std::vector<T> gk(mask ? kKeyChunk * D : 0), gv(mask ? kKeyChunk * D : 0);
      auto merge_here = [&](int64_t j, float mx, float sum, const __m256(&acc)[NV]) {
        merge<NV>(state.data() + j * kState, mx, sum, acc);
      };
      auto first_unit = [&](int64_t t) {  // the first unit whose work starts at or after t / threads of the total
        return std::lower_bound(work.begin(), work.end() - 1, work[units] * t / threads) - work.begin();
      };
      for (int64_t u = first_unit(t_begin); u < first_unit(t_end); ++u) {
        reset(state.data(), queries_of(u));
        const int64_t need = work[u + 1] - work[u] - 1;
        for (int64_t c = 0; c < need && run_chunk(u, c, kbuf, vbuf, score, gk, gv, merge_here); ++c) {
        }
        for (int64_t j = 0; j < queries_of(u); ++j) finish<NV, T>(state.data() + j * kState, out_of(u, j));
      }
    });
    return;
  }
  // Few units: one task per (unit, chunk) keeps every thread busy; partial results stored, merged afterwards.
  at::parallel_for(0, units * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kbuf(kb), vbuf(kb), score(cs);
    std::vector<T> gk(mask ? kKeyChunk * D : 0), gv(mask ? kKeyChunk * D : 0);
    float* dst = nullptr;
    auto store = [&](int64_t j, float mx, float sum, const __m256(&acc)[NV]) {
      float* p = dst + j * kState;
      p[0] = mx, p[1] = sum;
      for (int d = 0; d < NV; ++d) _mm256_storeu_ps(p + 2 + 8 * d, acc[d]);
    };
    for (int64_t i = begin; i < end; ++i) {
      dst = partial.data() + i * per_unit * kState;
      run_chunk(i / chunks, i % chunks, kbuf, vbuf, score, gk, gv, store);
    }
  });
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> state(kState);
    __m256 acc[NV];
    for (int64_t u = begin; u < end; ++u) {
      for (int64_t j = 0; j < queries_of(u); ++j) {
        reset(state.data(), 1);
        for (int64_t c = 0; c < chunks; ++c) {
          const float* p = partial.data() + ((u * chunks + c) * per_unit + j) * kState;
          for (int d = 0; d < NV; ++d) acc[d] = _mm256_loadu_ps(p + 2 + 8 * d);
          merge<NV>(state.data(), p[0], p[1], acc);
        }
        finish<NV, T>(state.data(), out_of(u, j));
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

#ifdef PAPERCLUB_AMX_ATTENTION  // the AVX-512 BF16 build: scores on AMX tiles (attention_amx.cpp)
bool amx_attention_applies(int64_t D);
void amx_attention_bf16(const uint16_t* q, const uint16_t* kc, const uint16_t* vc, const int64_t* slots,
                        const int64_t* cu, const bool* mask, uint16_t* out, int64_t B, int64_t Tq, int64_t H,
                        int64_t Hkv, int64_t cap, int64_t S, int64_t D, float scale);
#endif

// Whether bf16 attention with heads of D dims takes the AMX path in this process (fixed per process and model,
// never per call: every call must reduce in the same order).
bool attention_uses_amx(int64_t D) {
#ifdef PAPERCLUB_AMX_ATTENTION
  return amx_attention_applies(D);
#else
  (void)D;
  return false;
#endif
}

// q: (B, T, H, D), or (N, H, D) with cu_seqlens (B + 1,): the queries of a ragged batch packed row after row, row
// b's at [cu_seqlens[b], cu_seqlens[b + 1]) (no padding rows to compute). k_cache, v_cache: (slots, Hkv, cap, D);
// slots: (B,) int64; mask: (B, T, S) bool or None, T = the longest row. The output has q's shape. `amx`: bf16 on
// the AMX path (attention_amx.cpp) rather than the vector one; callers pass attention_uses_amx(D).
torch::Tensor attention_on(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                           int64_t S, c10::optional<torch::Tensor> mask_opt, double scale,
                           c10::optional<torch::Tensor> cu_seqlens, bool amx) {
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
  if (amx) {
    TORCH_CHECK(q.scalar_type() == torch::kBFloat16 && attention_uses_amx(D),
                "attention: no AMX path here for ", q.scalar_type(), " heads of ", D);
#ifdef PAPERCLUB_AMX_ATTENTION
    amx_attention_bf16(reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>()),
                       reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>()),
                       reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>()),
                       slots_c.data_ptr<int64_t>(), cu.data(), mp,
                       reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), B, Tq, H, Hkv, cap, S, D,
                       (float)scale);
#endif
    return out;
  }
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

torch::Tensor attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                        int64_t S, c10::optional<torch::Tensor> mask_opt, double scale,
                        c10::optional<torch::Tensor> cu_seqlens) {
  const bool amx = q.scalar_type() == torch::kBFloat16 && attention_uses_amx(q.size(-1));
  return attention_on(q, k_cache, v_cache, slots, S, mask_opt, scale, cu_seqlens, amx);
}
