// Batch-invariant, bandwidth-bound linear layers for x86 CPUs without BF16 dot products: float32 fused
// multiply-adds on 8 lanes (AVX2: AMD Zen 1-3, Intel before Skylake-SP) or 16 lanes (AVX-512F+BW without BF16:
// Intel Skylake-SP to Ice Lake). The same source is compiled once per instruction set (see cpu_kernels.py); the
// contract is that of `linear_cpu.cpp`:
//
//   y[m, n] = sum_k x[m, k] * w[n, k] + b[n]
//
// Each output element is reduced in one fixed order that depends only on K and the build: L float32 lanes
// accumulate k-chunks left to right (bf16: chunks of 2L values, two multiply-adds each; fp32: chunks of L, one),
// then one horizontal sum in a fixed tree. bf16 values are widened exactly to float32 by interleaving them with
// zeros (`vpunpck[lh]wd`: one instruction per L values, no shifts); within each 128-bit lane that puts values
// 0-3 in the first vector and 4-7 in the second, and x is widened once per call into the same order, so each
// product pairs the right x and w. A row's result is bit-identical whether it is computed alone (decode), with
// K other rows (verification) or in a batch of 16, which keeps greedy AR, SD and SSD token-identical. The
// weight matrix is streamed once per call for all rows.
//
// Tiles: 4 weight rows x R x rows, with the R x rows' chunks held in registers so that each widened weight
// chunk feeds 2R multiply-adds. R is 2 under AVX2 (16 registers: 8 accumulators, 4 x vectors, the zero and two
// widened weight vectors) and 4 under AVX-512 (32 registers: 16 + 8 + 3); leftover x rows take R = 2, then 1,
// and leftover weight rows run one at a time, all in the same per-element order. Measured on a 2-core AMD EPYC
// (Zen 3), weights in cache, one thread, 16 x rows: 25-30 GMAC/s against 20-23 for 3x4, 4x3 and 2x4 tiles with
// x read from memory; the unpack widening 13-27% faster than a shift-and-mask one.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <type_traits>

#include "linear_args.h"
#include "vec_avx2.h"

namespace {

constexpr int64_t kRowsPerTask = 16;  // weight rows per parallel work item
constexpr int64_t kPrefetchRows = 8;  // software prefetch of the weight rows this many rows ahead
constexpr int kWRows = 4;             // weight rows per tile
constexpr int64_t kXBlock = 48;       // x rows per sweep of a task's weight rows (48 x 1536 float32: 295 KB, in L2)

#if defined(__AVX512F__) && defined(__AVX512BW__)
using Vec = __m512;
using IVec = __m512i;
constexpr int kLanes = 16;
constexpr int kXRows = 4;  // x rows per tile
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
inline void storeu(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline IVec load_raw(const uint16_t* p) { return _mm512_loadu_si512((const void*)p); }
inline Vec widen_lo(IVec raw) { return _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), raw)); }
inline Vec widen_hi(IVec raw) { return _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), raw)); }
// The sum of 16 lanes: fold the upper 8 onto the lower 8, then the fixed 8-lane tree of vec_avx2.h.
inline float reduce(Vec v) { return reduce8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1))); }
#else
using Vec = __m256;
using IVec = __m256i;
constexpr int kLanes = 8;
constexpr int kXRows = 2;
inline Vec zero() { return _mm256_setzero_ps(); }
inline Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
inline void storeu(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline IVec load_raw(const uint16_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline Vec widen_lo(IVec raw) { return _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), raw)); }
inline Vec widen_hi(IVec raw) { return _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), raw)); }
inline float reduce(Vec v) { return reduce8(v); }
#endif

// One k-chunk of weights as float32 vectors, in the order x is widened to (see the top of the file).
template <typename T>
struct Chunk;
template <>
struct Chunk<uint16_t> {
  static constexpr int kVecs = 2, kWidth = 2 * kLanes;
  static void load(const uint16_t* p, Vec* v) {
    const IVec raw = load_raw(p);
    v[0] = widen_lo(raw);
    v[1] = widen_hi(raw);
  }
};
template <>
struct Chunk<float> {
  static constexpr int kVecs = 1, kWidth = kLanes;
  static void load(const float* p, Vec* v) { v[0] = loadu(p); }
};

template <typename T>
inline void put(T* y, float v) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    *y = c10::BFloat16(v).x;  // round to nearest even
  } else {
    *y = v;
  }
}

// The weight row kPrefetchRows below `wr` (which points at column k), once per cache line; may pass the end of w.
template <typename T>
inline void prefetch(const T* wr, int64_t K, int64_t k) {
  if (k % (64 / sizeof(T)) == 0) _mm_prefetch((const char*)(wr + kPrefetchRows * K), _MM_HINT_T0);
}

// y[m0 + j, n0 + i] for i < NB, j < R (xf: float32 x in chunk order). Per element: chunks left to right, within
// a chunk its vectors in order, into one accumulator; the same in every tile shape.
template <int NB, int R, typename T>
inline void tile(const float* xf, const T* w, const float* bias, T* y, int64_t K, int64_t N, int64_t n0,
                 int64_t m0) {
  using C = Chunk<T>;
  Vec acc[R][NB];
  for (int j = 0; j < R; ++j)
    for (int i = 0; i < NB; ++i) acc[j][i] = zero();
  const float* x = xf + m0 * K;
  for (int64_t k = 0; k < K; k += C::kWidth) {
    Vec xv[R][C::kVecs];
    for (int j = 0; j < R; ++j)
      for (int v = 0; v < C::kVecs; ++v) xv[j][v] = loadu(x + j * K + k + v * kLanes);
    for (int i = 0; i < NB; ++i) {
      const T* wr = w + (n0 + i) * K + k;
      prefetch(wr, K, k);
      Vec wv[C::kVecs];
      C::load(wr, wv);
      for (int v = 0; v < C::kVecs; ++v)
        for (int j = 0; j < R; ++j) acc[j][i] = fmadd(wv[v], xv[j][v], acc[j][i]);
    }
  }
  for (int i = 0; i < NB; ++i) {
    const float b = bias ? bias[n0 + i] : 0.f;
    for (int j = 0; j < R; ++j) put(y + (m0 + j) * N + n0 + i, reduce(acc[j][i]) + b);
  }
}

// All M rows of x against NB weight rows from n: kXRows at a time, then 2, then 1.
template <int NB, typename T>
inline void tile_column(const float* xf, const T* w, const float* bias, T* y, int64_t K, int64_t N, int64_t M,
                        int64_t n) {
  int64_t m = 0;
  for (; m + kXRows <= M; m += kXRows) tile<NB, kXRows>(xf, w, bias, y, K, N, n, m);
  if constexpr (kXRows > 2) {
    for (; m + 2 <= M; m += 2) tile<NB, 2>(xf, w, bias, y, K, N, n, m);
  }
  if (m < M) tile<NB, 1>(xf, w, bias, y, K, N, n, m);
}

// Cover weight rows [n_begin, n_end) x all M rows of x, x in blocks of kXBlock rows: a prefill's x (hundreds of
// rows) does not fit in L2, and sweeping all of it for every 4 weight rows read it from L3 each time.
template <typename T>
void run_block(const float* xf, const T* w, const float* bias, T* y, int64_t K, int64_t N, int64_t M,
               int64_t n_begin, int64_t n_end) {
  for (int64_t m0 = 0; m0 < M; m0 += kXBlock) {
    const int64_t mb = std::min(kXBlock, M - m0);
    const float* xb = xf + m0 * K;
    T* yb = y + m0 * N;
    int64_t n = n_begin;
    for (; n + kWRows <= n_end; n += kWRows) tile_column<kWRows>(xb, w, bias, yb, K, N, mb, n);
    for (; n < n_end; ++n) tile_column<1>(xb, w, bias, yb, K, N, mb, n);
  }
}

template <typename T>
void linear_rows(const float* xf, const T* W, const float* bias, T* Y, int64_t M, int64_t K, int64_t N) {
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    run_block<T>(xf, W, bias, Y, K, N, M, t0 * kRowsPerTask, std::min(N, t1 * kRowsPerTask));
  });
}

// bf16 x (M, K) widened to float32 in chunk order.
void widen_chunks(const uint16_t* x, float* out, int64_t n) {
  for (int64_t k = 0; k < n; k += Chunk<uint16_t>::kWidth) {
    Vec v[2];
    Chunk<uint16_t>::load(x + k, v);
    storeu(out + k, v[0]);
    storeu(out + k + kLanes, v[1]);
  }
}

}  // namespace

bool amx_available() { return false; }  // these builds have no tile path

// The same signature as the AVX-512 BF16 build; `amx` must be false here.
torch::Tensor linear_on(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt, bool amx) {
  TORCH_CHECK(!amx, "linear: this CPU cannot use AMX tiles");
  const LinearArgs args = linear_args(x, w, bias_opt);
  const int64_t M = args.M, K = args.K, N = args.N;
  const torch::Tensor& y = args.y;
  const float* bias = args.bias;
  if (x.scalar_type() == torch::kBFloat16) {
    TORCH_CHECK(K % 32 == 0, "linear: bf16 needs K % 32 == 0");
    auto xf = torch::empty({M, K}, x.options().dtype(torch::kFloat32));
    widen_chunks(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), xf.data_ptr<float>(), M * K);
    linear_rows(xf.data_ptr<float>(), reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), bias,
                reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), M, K, N);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32 && K % 16 == 0, "linear: fp32 needs K % 16 == 0");
    linear_rows(x.data_ptr<float>(), w.data_ptr<float>(), bias, y.data_ptr<float>(), M, K, N);
  }
  return y;
}

torch::Tensor linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt) {
  return linear_on(x, w, bias_opt, false);
}
