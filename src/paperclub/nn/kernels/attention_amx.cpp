// bf16 attention over a slot KV cache with the query-key scores on Intel AMX tiles, batch-invariant like
// attention_cpu.cpp (which calls it for bf16 heads of a multiple of 32 where the process uses AMX).
//
// A unit of work is one row b, one KV head and up to 16 "columns": the query heads of that KV head for the row's
// queries, (query t, head g) in order. Per unit:
//   1. scores, transposed: S^T = K Q^T on the tile unit. The cache's keys are the A tiles as they lie (16 keys x 32
//      dims, rows D apart), the columns' queries the B tile (pair-interleaved, packed once per unit), each C tile
//      16 keys x 16 columns in fp32. The tile unit computes every C element from its own key and query alone, in an
//      order fixed by the head size: a score does not depend on the keys or columns beside it.
//   2. per column (a vector lane): scale, mask to -inf, the max over the visible keys (exact in any order).
//   3. e = exp(score - max), its sum added key after key in cache order (masked keys add an exact 0).
//   4. out = sum of e * v over the visible keys, key after key (fp32 multiply-adds, masked keys skipped), / sum.
// No chunks and no rescaling: a column's arithmetic is the sequence of its visible keys, in order, and nothing
// else. So a query's bits do not depend on how many rows, queries or heads share the call (decode, K+1-token
// verification and a batch of 16 agree), nor on where its keys lie: a token-tree node that sees the prefix and then
// its ancestors with other branches between them gets the bits of its path decoded one token at a time, without
// gathering its keys (the scores are per key; the sums skip what the node does not see).
//
// Why: at 16 query rows (a token tree's verification) the vector kernel spent most of its time on scores, each
// one a 64-term dot product folded across lanes; here they cost a few tile products per 16 keys, and what remains
// is the softmax and the value sum (BENCHMARKS.md).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "amx_tiles.h"
#include "vec_avx2.h"

bool amx_available();  // amx_cpu.cpp

namespace {

constexpr int64_t kCols = 16;   // columns (query heads) per unit: one C tile's width
constexpr int64_t kKeys = 16;   // keys per tile product (rows of A and C)
constexpr int64_t kDims = 32;   // bf16 dims per tile product (64 bytes per A row)
constexpr int64_t kPv = 32;     // keys per tile product of the value sums (e pairs)
constexpr int64_t kChunk = 128; // keys per task of the tile path (fixed positions)
constexpr int64_t kWindow = 32; // a column's last kWindow keys (at least) go through the float32 tail
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Every tile 16 rows of 64 bytes. Scores: tmm0 = C (16 keys x 16 columns, fp32), tmm1 = A (16 keys x 32 dims),
// tmm2 = B (16 dim pairs x 16 columns x 2). Value sums: tmm4-7 = C (16 columns x 16 dims each), tmm1 = A (16
// columns x 32 keys of e), tmm2 = B (16 key pairs x 16 dims x 2).
TileConfig make_config() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
  return c;
}

// e^x for 16 lanes, each on its own: exp8 (vec_avx2.h) on each half (the merges and the float32 tail).
inline __m512 exp16(__m512 x) {
  const __m256 lo = exp8(_mm512_castps512_ps256(x));
  const __m256 hi = exp8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

// e^x for x <= 0 to bf16 precision (the tile path rounds e to bf16): 2^(x log2 e) as 2^n 2^f, |f| <= 1/2, 2^f by its
// degree-4 Taylor polynomial (relative error < 5e-5, under a quarter of a bf16 step). Each lane on its own.
inline __m512 exp16_bf16(__m512 x) {
  const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.f)), _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 y = _mm512_set1_ps(9.6181291e-3f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.5504109e-2f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4022651e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314718e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(y, n);
}

inline __m512 widen16(const uint16_t* p) {  // 16 bf16 values in order, widened exactly
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// The tail's value sums for columns [c0, c0 + cn), cn <= CB, all of one KV head: acc_c = sum over keys s < n
// whose bit c is set in bits[s] of e[s][c] * v_s, in key order (fp32 multiply-adds). NZ = D / 16 vectors a row.
template <int NZ, int CB>
void value_sum(const float* e, const uint16_t* V, int64_t n, const uint16_t* bits, int64_t c0, int64_t cn,
               __m512 (&acc)[CB][NZ]) {
  constexpr int64_t D = 16 * NZ;
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NZ; ++v) acc[c][v] = _mm512_setzero_ps();
  const unsigned live = (1u << cn) - 1;
  for (int64_t s = 0; s < n; ++s) {
    const unsigned on = (unsigned(bits[s]) >> c0) & live;
    if (!on) continue;
    __m512 vv[NZ];
    for (int v = 0; v < NZ; ++v) vv[v] = widen16(V + s * D + 16 * v);
    for (int c = 0; c < CB; ++c) {
      if (!(on >> c & 1)) continue;  // not visible: skipped, so a stale cache entry cannot reach the output
      const __m512 p = _mm512_set1_ps(e[s * kCols + c0 + c]);
      for (int v = 0; v < NZ; ++v) acc[c][v] = _mm512_fmadd_ps(p, vv[v], acc[c][v]);
    }
  }
}

// What one query sees: how many keys, the leading run [0, lead) and the end of the last one, [0, last).
struct Seen {
  int64_t count, lead, last;
};

Seen seen_of(const bool* m, int64_t S) {
  if (!m) return {S, S, S};
  Seen r{0, -1, 0};
  for (int64_t s = 0; s < S; s += 64) {
    const __mmask64 live = S - s >= 64 ? ~__mmask64(0) : (__mmask64(1) << (S - s)) - 1;
    const __m512i bytes = _mm512_maskz_loadu_epi8(live, m + s);
    const uint64_t on = _mm512_test_epi8_mask(bytes, bytes) & live;
    r.count += _mm_popcnt_u64(on);
    if (r.lead < 0 && on != live) r.lead = s + __builtin_ctzll(~on);
    if (on) r.last = s + 64 - __builtin_clzll(on);
  }
  if (r.lead < 0) r.lead = S;
  return r;
}

// A unit of work: one row, up to 16 of its columns. A row's columns are its query heads in KV-head-major order,
// (KV head, query, head in the group), so that a unit's columns share one or a few KV heads.
struct Unit {
  int64_t b, c_first, nc;      // row, first column, columns (<= 16)
  int64_t n;                   // keys [0, n) hold everything a column sees
  int64_t xa;                  // keys [0, xa) are the tile part of some column: chunks of kChunk
  int64_t t0;                  // the tail's first key (a multiple of kKeys): no column's tile part reaches past it
  int64_t task0;               // the unit's first chunk task
  int64_t nh;                  // KV heads among its columns
  int64_t hk[kCols];           // those KV heads, in order
  int64_t h_first[kCols + 1];  // columns [h_first[i], h_first[i + 1]) belong to hk[i]
  alignas(64) int32_t x[kCols];  // column c's tile part: keys [0, x[c]) (0 past nc)
};

// One 16-key block of S^T for the unit's columns (tmm0), every KV head's keys against its own columns' queries
// (the B tile of a KV head holds zeros in the other heads' columns, which the tile unit adds as exact zeros), stored
// as 16 rows of 16 floats.
template <int64_t D>
inline void score_block(const Unit& u, const uint16_t* const* K, int64_t k0, int64_t n, const uint32_t* qb,
                        uint16_t* kpad, float* dst) {
  _tile_zero(0);
  for (int64_t i = 0; i < u.nh; ++i) {
    const uint16_t* a = K[i] + k0 * D;
    if (k0 + kKeys > n) {  // a partial block: its keys, zero rows after (never read past the keys needed)
      std::fill(kpad, kpad + kKeys * D, 0);
      std::memcpy(kpad, a, (n - k0) * D * sizeof(uint16_t));
      a = kpad;
    }
    for (int64_t d = 0; d < D / kDims; ++d) {
      _tile_loadd(1, a + d * kDims, D * sizeof(uint16_t));
      _tile_loadd(2, qb + (i * (D / kDims) + d) * 16 * kCols, kCols * sizeof(uint32_t));
      _tile_dpbf16ps(0, 1, 2);
    }
  }
  _tile_stored(0, dst, kCols * sizeof(float));
}

inline __m512 round_bf16(__m512 v) {  // to the nearest bf16 (ties to even), as float32; finite inputs
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xFFFF0000u))));
}

// The softmax numerators of n keys x 16 columns (lanes) in place: each score scaled, -inf where seen(s) leaves its
// column out; the max per column over the keys kept; e = exp(score - max), exactly 0 where left out, and its sum
// added key after key. kBf16: e to bf16 precision and rounded to bf16 (the tile path), else float32 (the tail).
template <bool kBf16, typename SeenFn>
inline void softmax_lanes(float* sc, int64_t n, float scale, SeenFn seen, __m512& vmax, __m512& vsum) {
  const __m512 vscale = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(kNegInf);
  vmax = ninf;
  for (int64_t s = 0; s < n; ++s) {
    const __m512 v = _mm512_mask_mul_ps(ninf, seen(s), _mm512_loadu_ps(sc + s * kCols), vscale);
    _mm512_storeu_ps(sc + s * kCols, v);
    vmax = _mm512_max_ps(vmax, v);
  }
  vsum = _mm512_setzero_ps();
  for (int64_t s = 0; s < n; ++s) {
    const __m512 v = _mm512_loadu_ps(sc + s * kCols);
    const __mmask16 kept = _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_OQ);
    __m512 p;
    if constexpr (kBf16) {
      p = round_bf16(_mm512_maskz_mov_ps(kept, exp16_bf16(_mm512_sub_ps(v, vmax))));
    } else {
      p = _mm512_maskz_mov_ps(kept, exp16(_mm512_sub_ps(v, vmax)));
    }
    _mm512_storeu_ps(sc + s * kCols, p);
    vsum = _mm512_add_ps(vsum, p);
  }
}

// What a unit's columns have seen so far: max and sum per column (lanes) and each column's D value sums. A part (its
// max, sum and value sums per column) is merged by the log-sum-exp rescaling of flash-decoding; a column's first part
// with a key is taken as it is, a part without one changes nothing. Every lane follows the same rule.
template <int64_t D>
inline void merge_parts(__m512& m, __m512& l, float* acc, int64_t nc, __m512 pm, __m512 pl, const float* pacc,
                        int64_t pstride) {
  const __m512 ninf = _mm512_set1_ps(kNegInf), one = _mm512_set1_ps(1.f), zero = _mm512_setzero_ps();
  const __mmask16 skip = _mm512_cmp_ps_mask(pm, ninf, _CMP_EQ_OQ);
  const __mmask16 first = _mm512_cmp_ps_mask(m, ninf, _CMP_EQ_OQ) & ~skip;
  const __m512 mx = _mm512_max_ps(m, pm);
  __m512 old = exp16(_mm512_sub_ps(m, mx)), add = exp16(_mm512_sub_ps(pm, mx));
  old = _mm512_mask_mov_ps(_mm512_mask_mov_ps(old, skip, one), first, zero);
  add = _mm512_mask_mov_ps(_mm512_mask_mov_ps(add, skip, zero), first, one);
  m = _mm512_mask_mov_ps(mx, skip, m);
  l = _mm512_fmadd_ps(pl, add, _mm512_mul_ps(l, old));
  alignas(64) float o[kCols], a[kCols];
  _mm512_store_ps(o, old), _mm512_store_ps(a, add);
  for (int64_t c = 0; c < nc; ++c) {
    if (skip >> c & 1) continue;
    const __m512 vo = _mm512_set1_ps(o[c]), va = _mm512_set1_ps(a[c]);
    for (int64_t d = 0; d < D; d += 16)
      _mm512_storeu_ps(acc + c * D + d, _mm512_fmadd_ps(_mm512_loadu_ps(pacc + c * pstride + d), va,
                                                        _mm512_mul_ps(_mm512_loadu_ps(acc + c * D + d), vo)));
  }
}

// Value rows k, k + 1 of 16-dim slice d as one B-tile row: (v[k][j], v[k + 1][j]) for j in the slice.
inline void value_pairs(const uint16_t* V, int64_t D, int64_t k0, int64_t dims, uint16_t* vb) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                      37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t r = 0; r < 16; ++r) {
    const uint16_t* a = V + (k0 + 2 * r) * D;
    for (int64_t d = 0; d < dims; d += 32) {  // 32 dims of both rows: two B-tile rows
      const __m512i x = _mm512_loadu_si512(a + d), y = _mm512_loadu_si512(a + D + d);
      _mm512_store_si512(vb + ((d / 16) * 16 + r) * 32, _mm512_permutex2var_epi16(x, lo, y));
      _mm512_store_si512(vb + ((d / 16 + 1) * 16 + r) * 32, _mm512_permutex2var_epi16(x, hi, y));
    }
  }
}

// out[c] = (in[0][c], in[1][c], ..., in[15][c]): a 16 x 16 transpose of 32-bit elements, in registers.
inline void transpose16(const __m512i (&a)[16], __m512i (&out)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // u[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i + 3
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
    out[j] = _mm512_shuffle_i32x4(v0, v2, 0x88), out[4 + j] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    out[8 + j] = _mm512_shuffle_i32x4(v1, v3, 0x88), out[12 + j] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

template <int NZ>
void attend_amx(const uint16_t* q, const uint16_t* kc, const uint16_t* vc, const int64_t* slots, const int64_t* cu,
                const bool* mask, uint16_t* out, int64_t B, int64_t Tq, int64_t H, int64_t Hkv, int64_t cap,
                int64_t S, float scale) {
  constexpr int64_t D = 16 * NZ, dim_tiles = D / kDims, pv_tiles = D / 16;
  constexpr int CB = NZ <= 4 ? 24 / NZ : NZ <= 8 ? 2 : 1;  // columns per tail value pass: CB * NZ accumulators
  const int64_t G = H / Hkv;
  // What each query sees (once per query, not per column).
  std::vector<Seen> seen(B * Tq);
  at::parallel_for(0, B * Tq, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / Tq, t = i % Tq;
      if (t < cu[b + 1] - cu[b]) seen[i] = seen_of(mask ? mask + i * S : nullptr, S);
    }
  });
  // Plan the units and each column's tile part.
  auto column = [&](int64_t b, int64_t j) {  // column j of row b -> (KV head, query, head in the group)
    const int64_t per = (cu[b + 1] - cu[b]) * G;
    return std::array<int64_t, 3>{j / per, (j % per) / G, j % G};
  };
  std::vector<Unit> units;
  std::vector<uint16_t> tail_bits;  // per unit, keys [t0, n): the columns that take key s in their tail
  std::vector<int64_t> tail_at;
  int64_t tasks = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t cols = (cu[b + 1] - cu[b]) * H;
    for (int64_t c0 = 0; c0 < cols; c0 += kCols) {
      Unit u{};
      u.b = b, u.c_first = c0, u.nc = std::min(kCols, cols - c0);
      int64_t x_min = S;
      for (int64_t c = 0; c < u.nc; ++c) {
        const auto [hk, t, g] = column(b, c0 + c);
        if (u.nh == 0 || u.hk[u.nh - 1] != hk) u.h_first[u.nh] = c, u.hk[u.nh++] = hk;
        const Seen& sn = seen[b * Tq + t];
        // The tile part: whole 32-key blocks of the leading run, leaving at least the last kWindow keys seen to
        // the tail. A token-tree node's gaps lie in its last (depth) keys, so it and its path decoded one token at
        // a time get the same tile part and the same tail, key for key, while the tree is at most kWindow deep.
        const int64_t x = std::max<int64_t>(0, std::min((sn.count - kWindow) / kPv * kPv, sn.lead / kPv * kPv));
        u.x[c] = static_cast<int32_t>(x);
        u.xa = std::max(u.xa, x), x_min = std::min(x_min, x), u.n = std::max(u.n, sn.last);
      }
      u.h_first[u.nh] = u.nc;
      u.t0 = std::min(x_min, u.n) / kKeys * kKeys;
      u.task0 = tasks;
      tasks += (u.xa + kChunk - 1) / kChunk;
      tail_at.push_back(tail_bits.size());
      const size_t at = tail_bits.size();
      tail_bits.resize(at + (u.n - u.t0), 0);
      for (int64_t c = 0; c < u.nc; ++c) {
        const int64_t t = column(b, c0 + c)[1];
        const bool* m = mask ? mask + (b * Tq + t) * S : nullptr;
        const int64_t run = std::min(u.n, seen[b * Tq + t].lead);  // keys below it seen without looking
        for (int64_t s = std::max<int64_t>(u.t0, u.x[c]); s < u.n; ++s)
          if (s < run || m[s]) tail_bits[at + s - u.t0] |= uint16_t(1u << c);
      }
      units.push_back(u);
    }
  }
  const int64_t nu = units.size();
  // The columns' queries as B tiles: per unit, [KV head of the unit][dim tile][dim pair][column], zero elsewhere.
  constexpr int64_t qb_head = dim_tiles * 16 * kCols;
  std::vector<int64_t> qb_at(nu + 1, 0);
  for (int64_t i = 0; i < nu; ++i) qb_at[i + 1] = qb_at[i] + units[i].nh * qb_head;
  // Buffers kept between calls (no fresh pages to fault in at every step), the calling thread's own: the workers
  // reach them through these references.
  thread_local std::vector<uint32_t> qb_buf;
  thread_local std::vector<float> parts_buf;
  std::vector<uint32_t>& qb = qb_buf;
  qb.assign(qb_at[nu], 0u);
  for (int64_t i = 0; i < nu; ++i) {
    const Unit& u = units[i];
    for (int64_t e = 0; e < u.nh; ++e)
      for (int64_t c = u.h_first[e]; c < u.h_first[e + 1]; ++c) {
        const auto [hk, t, g] = column(u.b, u.c_first + c);
        const uint32_t* qr = reinterpret_cast<const uint32_t*>(q + ((cu[u.b] + t) * H + hk * G + g) * D);
        for (int64_t r = 0; r < dim_tiles * 16; ++r) qb[qb_at[i] + (e * dim_tiles * 16 + r) * kCols + c] = qr[r];
      }
  }
  auto keys_of = [&](const Unit& u, const uint16_t* cache, const uint16_t** dst) {
    for (int64_t e = 0; e < u.nh; ++e) dst[e] = cache + (slots[u.b] * Hkv + u.hk[e]) * cap * D;
  };
  // Parts of the tile path: per chunk task, per column: max, sum, D value sums.
  constexpr int64_t kPartTask = (2 + D) * kCols;  // 64-byte aligned: D is a multiple of 32
  std::vector<float>& parts = parts_buf;  // every entry a task's columns read is written before
  if (parts.size() < size_t(tasks * kPartTask + 16)) parts.resize(tasks * kPartTask + 16);
  std::vector<int64_t> task_unit(tasks);
  for (int64_t i = 0; i < nu; ++i)
    for (int64_t t = units[i].task0; t < (i + 1 < nu ? units[i + 1].task0 : tasks); ++t) task_unit[t] = i;
  const __m512 ninf = _mm512_set1_ps(kNegInf);

  // 1. The tile path, one chunk of kChunk keys per task: scores, the chunk's max per column, e rounded to bf16
  //    and its sum, then sum_k e_k v_k on the tile unit (e as the A tile, pairs of value rows as the B tiles).
  at::parallel_for(0, tasks, 1, [&](int64_t i0, int64_t i1) {
    const TileConfig cfg = make_config();
    _tile_loadconfig(&cfg);
    alignas(64) float sc[kChunk * kCols];
    alignas(64) uint16_t pb[kCols * kChunk] = {};       // e as bf16, [column][key] (rows past nc: unread)
    alignas(64) uint16_t vb[4 * 16 * 32];               // up to 4 B tiles: [dim slice][key pair][dim][2]
    alignas(64) float ob[kCols * 16];
    std::vector<uint16_t> kpad(kKeys * D);
    const uint16_t* K[kCols];
    const uint16_t* V[kCols];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ui = task_unit[i];
      const Unit& u = units[ui];
      const int64_t k0 = (i - u.task0) * kChunk, nk = std::min(u.xa, k0 + kChunk) - k0;  // a multiple of kPv
      keys_of(u, kc, K), keys_of(u, vc, V);
      for (int64_t s = 0; s < nk; s += kKeys)
        score_block<D>(u, K, k0 + s, u.xa, qb.data() + qb_at[ui], kpad.data(), sc + s * kCols);
      const __m512i vx = _mm512_load_si512(u.x);
      __m512 vmax, vsum;
      softmax_lanes<true>(sc, nk, scale, [&](int64_t s) {  // key k0 + s is in column c's tile part: below x[c]
        return _mm512_cmpgt_epi32_mask(vx, _mm512_set1_epi32(int32_t(k0 + s)));
      }, vmax, vsum);
      // e as the A tile's layout, [column][key] in bf16: keys 2r and 2r + 1 of a column make one 32-bit pair (e is
      // already a bf16 value: its low half is zero), then 16 x 16 transposes of the pairs.
      for (int64_t r0 = 0; r0 < nk / 2; r0 += 16) {
        __m512i w[16], wt[16];
        for (int r = 0; r < 16; ++r) {
          const __m512i e0 = _mm512_load_si512(sc + (2 * (r0 + r)) * kCols);
          const __m512i e1 = _mm512_load_si512(sc + (2 * (r0 + r) + 1) * kCols);
          w[r] = _mm512_or_si512(_mm512_srli_epi32(e0, 16), e1);
        }
        transpose16(w, wt);
        for (int64_t c = 0; c < u.nc; ++c) _mm512_store_si512(pb + c * kChunk + 2 * r0, wt[c]);
      }
      float* part = parts.data() + i * kPartTask;  // [max of each column][sum of each column][column][D]
      _mm512_storeu_ps(part, vmax);
      _mm512_storeu_ps(part + kCols, vsum);
      for (int64_t e = 0; e < u.nh; ++e) {
        for (int64_t d0 = 0; d0 < pv_tiles; d0 += 4) {  // up to 4 C tiles (64 dims) per pass over the chunk
          const int64_t nd = std::min<int64_t>(4, pv_tiles - d0);
          _tile_zero(4);
          _tile_zero(5);
          _tile_zero(6);
          _tile_zero(7);
          for (int64_t s = 0; s < nk; s += kPv) {
            value_pairs(V[e] + d0 * 16, D, k0 + s, nd * 16, vb);
            _tile_loadd(1, pb + s, kChunk * sizeof(uint16_t));
#define PAPERCLUB_PV_STEP(T, d)                                 \
  if (d < nd) {                                                 \
    _tile_loadd(2, vb + d * 16 * 32, 32 * sizeof(uint16_t));    \
    _tile_dpbf16ps(T, 1, 2);                                    \
  }
            PAPERCLUB_PV_STEP(4, 0)
            PAPERCLUB_PV_STEP(5, 1)
            PAPERCLUB_PV_STEP(6, 2)
            PAPERCLUB_PV_STEP(7, 3)
#undef PAPERCLUB_PV_STEP
          }
#define PAPERCLUB_PV_STORE(T, d)                                                                  \
  if (d < nd) {                                                                                   \
    _tile_stored(T, ob, 16 * sizeof(float));                                                      \
    for (int64_t c = u.h_first[e]; c < u.h_first[e + 1]; ++c)                                     \
      std::memcpy(part + 2 * kCols + c * D + (d0 + d) * 16, ob + c * 16, 16 * sizeof(float));     \
  }
          PAPERCLUB_PV_STORE(4, 0)
          PAPERCLUB_PV_STORE(5, 1)
          PAPERCLUB_PV_STORE(6, 2)
          PAPERCLUB_PV_STORE(7, 3)
#undef PAPERCLUB_PV_STORE
        }
      }
    }
    _tile_release();
  });

  // 2. Per unit: merge its chunks in order, then the tail in float32 (scores on tiles, e, value sums key after
  //    key over what each column sees past its tile part), merged last; out = acc / sum.
  at::parallel_for(0, nu, 1, [&](int64_t u0, int64_t u1) {
    const TileConfig cfg = make_config();
    _tile_loadconfig(&cfg);
    std::vector<float> sc;
    std::vector<uint16_t> kpad(kKeys * D);
    std::vector<float> acc(kCols * D), tacc(kCols * D, 0.f);
    const uint16_t* K[kCols];
    const uint16_t* V[kCols];
    for (int64_t ui = u0; ui < u1; ++ui) {
      const Unit& u = units[ui];
      __m512 m = ninf, l = _mm512_setzero_ps();
      std::fill(acc.begin(), acc.end(), 0.f);
      const int64_t next = ui + 1 < nu ? units[ui + 1].task0 : tasks;
      for (int64_t i = u.task0; i < next; ++i) {
        const float* part = parts.data() + i * kPartTask;
        merge_parts<D>(m, l, acc.data(), u.nc, _mm512_loadu_ps(part), _mm512_loadu_ps(part + kCols), part + 2 * kCols,
                       D);
      }
      const int64_t nt = u.n - u.t0;
      if (nt > 0) {
        keys_of(u, kc, K), keys_of(u, vc, V);
        const uint16_t* tb = tail_bits.data() + tail_at[ui];
        sc.resize((nt + kKeys - 1) / kKeys * kKeys * kCols);
        for (int64_t s = 0; s < nt; s += kKeys)
          score_block<D>(u, K, u.t0 + s, u.n, qb.data() + qb_at[ui], kpad.data(), sc.data() + s * kCols);
        __m512 vmax, vsum;
        softmax_lanes<false>(sc.data(), nt, scale, [&](int64_t s) { return __mmask16(tb[s]); }, vmax, vsum);
        for (int64_t e = 0; e < u.nh; ++e)
          for (int64_t c0 = u.h_first[e]; c0 < u.h_first[e + 1]; c0 += CB) {
            __m512 a[CB][NZ];
            const int64_t cn = std::min<int64_t>(CB, u.h_first[e + 1] - c0);
            value_sum<NZ, CB>(sc.data(), V[e] + u.t0 * D, nt, tb, c0, cn, a);
            for (int64_t c = c0; c < c0 + cn; ++c)
              for (int v = 0; v < NZ; ++v) _mm512_storeu_ps(tacc.data() + c * D + 16 * v, a[c - c0][v]);
          }
        merge_parts<D>(m, l, acc.data(), u.nc, vmax, vsum, tacc.data(), D);
      }
      alignas(64) float lsum[kCols];
      _mm512_store_ps(lsum, l);
      for (int64_t c = 0; c < u.nc; ++c) {
        const auto [hk, t, g] = column(u.b, u.c_first + c);
        uint16_t* o = out + ((cu[u.b] + t) * H + hk * G + g) * D;
        const __m256 inv = _mm256_set1_ps(lsum[c] > 0.f ? 1.f / lsum[c] : 0.f);
        for (int64_t d = 0; d < D; d += 8) store8(o + d, _mm256_mul_ps(_mm256_loadu_ps(acc.data() + c * D + d), inv));
      }
    }
    _tile_release();
  });
}

template <int NZ = 2>
void attend_amx_d(int64_t D, const uint16_t* q, const uint16_t* kc, const uint16_t* vc, const int64_t* slots,
                  const int64_t* cu, const bool* mask, uint16_t* out, int64_t B, int64_t Tq, int64_t H, int64_t Hkv,
                  int64_t cap, int64_t S, float scale) {
  if constexpr (NZ <= 16) {
    if (D == 16 * NZ) return attend_amx<NZ>(q, kc, vc, slots, cu, mask, out, B, Tq, H, Hkv, cap, S, scale);
    attend_amx_d<NZ + 2>(D, q, kc, vc, slots, cu, mask, out, B, Tq, H, Hkv, cap, S, scale);
  }
}

}  // namespace

// Whether bf16 attention with heads of D dims runs here (a property of the process and the model, never of a call).
// PAPERCLUB_AMX_ATTENTION=0 keeps the vector path (PAPERCLUB_AMX=0 turns off every AMX path).
bool amx_attention_applies(int64_t D) {
  static const bool on = [] {
    const char* env = std::getenv("PAPERCLUB_AMX_ATTENTION");
    return amx_available() && !(env != nullptr && std::strcmp(env, "0") == 0);
  }();
  return on && D % kDims == 0 && D <= 256;
}

// q: (N, H, D) bf16 packed by cu (row b's queries at [cu[b], cu[b + 1])); caches (slots, Hkv, cap, D); mask (B, Tq,
// S) or null (every query sees [0, S)); out like q.
void amx_attention_bf16(const uint16_t* q, const uint16_t* kc, const uint16_t* vc, const int64_t* slots,
                        const int64_t* cu, const bool* mask, uint16_t* out, int64_t B, int64_t Tq, int64_t H,
                        int64_t Hkv, int64_t cap, int64_t S, int64_t D, float scale) {
  TORCH_CHECK(amx_attention_applies(D), "attention: no AMX path for head size ", D);
  attend_amx_d(D, q, kc, vc, slots, cu, mask, out, B, Tq, H, Hkv, cap, S, scale);
}
