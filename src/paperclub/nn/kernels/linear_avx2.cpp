// Batch-invariant, bandwidth-bound linear layers for x86 CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 1-3,
// Intel before Skylake-SP). The AVX2 build's counterpart of `linear_cpu.cpp`, with the same contract:
//
//   y[m, n] = sum_k x[m, k] * w[n, k] + b[n]
//
// Each output element is reduced in one fixed order that depends only on K: 8 float32 lanes accumulate k-chunks
// of 16 left to right, two fused multiply-adds per chunk, then one horizontal sum in a fixed tree. bf16 values
// are widened exactly to float32 by interleaving them with zeros (`vpunpck[lh]wd`: one instruction per 8 values,
// no shifts); that puts chunk elements {0-3, 8-11} in the first vector and {4-7, 12-15} in the second, and x is
// widened once per call into the same order, so each product pairs the right x and w. A row's result is
// bit-identical whether it is computed alone (decode), with K other rows (verification) or in a batch of 16,
// which keeps greedy AR, SD and SSD token-identical. The weight matrix is streamed once per call for all rows.
//
// Tiles: AVX2 has 16 ymm registers. One x row (decode) runs 4 weight rows at a time, four independent FMA chains
// with x read from L1; two or more x rows run 4 weight rows x 2 x rows with both x rows' chunks in registers
// (8 accumulators, 4 x vectors, the zero and the widened weights: 16), so each weight load feeds 4 FMAs.
// Measured on a 2-core AMD EPYC (Zen 3), weights in cache, one thread, 16 x rows: 25-30 GMAC/s against 20-23 for
// 3x4, 4x3 and 2x4 tiles with x read from memory; the unpack widening 13-27% faster than a shift-and-mask one.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <type_traits>

namespace {

constexpr int64_t kRowsPerTask = 16;   // weight rows per parallel work item
constexpr int64_t kPrefetchRows = 8;  // software prefetch of the weight rows this many rows ahead

// The sum of v's 8 lanes in one fixed tree: t[i] = v[i] + v[i+4], then (t0 + t2) + (t1 + t3).
inline float reduce8(__m256 v) {
  const __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t));
  return _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)));
}

// One k-chunk of 16 weights as two float32 vectors, in the order x is widened to (see the top of the file).
inline void load_chunk(const uint16_t* p, __m256& lo, __m256& hi) {
  const __m256i raw = _mm256_loadu_si256((const __m256i*)p);
  lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), raw));
  hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), raw));
}
inline void load_chunk(const float* p, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(p);
  hi = _mm256_loadu_ps(p + 8);
}

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

// y[m0, n0 + i] for i < NB: one x row (xf: float32 x in chunk order).
template <int NB, typename T>
inline void tile_row(const float* xf, const T* w, const float* bias, T* y, int64_t K, int64_t N, int64_t n0,
                     int64_t m0) {
  __m256 acc[NB];
  for (int i = 0; i < NB; ++i) acc[i] = _mm256_setzero_ps();
  const float* x = xf + m0 * K;
  for (int64_t k = 0; k < K; k += 16) {
    for (int i = 0; i < NB; ++i) {
      const T* wr = w + (n0 + i) * K + k;
      prefetch(wr, K, k);
      __m256 lo, hi;
      load_chunk(wr, lo, hi);
      acc[i] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + k), acc[i]);
      acc[i] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + k + 8), acc[i]);
    }
  }
  for (int i = 0; i < NB; ++i) put(y + m0 * N + n0 + i, reduce8(acc[i]) + (bias ? bias[n0 + i] : 0.f));
}

// y[m0 + j, n0 + i] for i < NB, j < 2: two x rows held in registers, each weight chunk feeding 2 * 2 FMAs.
template <int NB, typename T>
inline void tile_2rows(const float* xf, const T* w, const float* bias, T* y, int64_t K, int64_t N, int64_t n0,
                       int64_t m0) {
  __m256 a0[NB], a1[NB];
  for (int i = 0; i < NB; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
  const float* x0 = xf + m0 * K;
  const float* x1 = x0 + K;
  for (int64_t k = 0; k < K; k += 16) {
    const __m256 xl0 = _mm256_loadu_ps(x0 + k), xh0 = _mm256_loadu_ps(x0 + k + 8);
    const __m256 xl1 = _mm256_loadu_ps(x1 + k), xh1 = _mm256_loadu_ps(x1 + k + 8);
    for (int i = 0; i < NB; ++i) {
      const T* wr = w + (n0 + i) * K + k;
      prefetch(wr, K, k);
      __m256 lo, hi;
      load_chunk(wr, lo, hi);
      a0[i] = _mm256_fmadd_ps(lo, xl0, a0[i]);  // per element: lo then hi, as in tile_row
      a1[i] = _mm256_fmadd_ps(lo, xl1, a1[i]);
      a0[i] = _mm256_fmadd_ps(hi, xh0, a0[i]);
      a1[i] = _mm256_fmadd_ps(hi, xh1, a1[i]);
    }
  }
  for (int i = 0; i < NB; ++i) {
    const float b = bias ? bias[n0 + i] : 0.f;
    put(y + m0 * N + n0 + i, reduce8(a0[i]) + b);
    put(y + (m0 + 1) * N + n0 + i, reduce8(a1[i]) + b);
  }
}

// Cover weight rows [n_begin, n_end) x all M rows of x: 4-row tiles and 1-row tails, x rows in pairs and one
// single (same per-element order everywhere).
template <typename T>
void run_block(const float* xf, const T* w, const float* bias, T* y, int64_t K, int64_t N, int64_t M,
               int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile_2rows<4>(xf, w, bias, y, K, N, n, m);
    if (m < M) tile_row<4>(xf, w, bias, y, K, N, n, m);
  }
  for (; n < n_end; ++n) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile_2rows<1>(xf, w, bias, y, K, N, n, m);
    if (m < M) tile_row<1>(xf, w, bias, y, K, N, n, m);
  }
}

template <typename T>
void linear_rows(const float* xf, const T* W, const float* bias, T* Y, int64_t M, int64_t K, int64_t N) {
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    run_block<T>(xf, W, bias, Y, K, N, M, t0 * kRowsPerTask, std::min(N, t1 * kRowsPerTask));
  });
}

// bf16 x (M, K) widened to float32 in chunk order: per 16 values, {0-3, 8-11} then {4-7, 12-15}.
void widen_chunks(const uint16_t* x, float* out, int64_t n) {
  for (int64_t k = 0; k < n; k += 16) {
    __m256 lo, hi;
    load_chunk(x + k, lo, hi);
    _mm256_storeu_ps(out + k, lo);
    _mm256_storeu_ps(out + k + 8, hi);
  }
}

}  // namespace

bool amx_available() { return false; }  // the AVX2 build has no tile path

// The same signature as the AVX-512 build; `amx` must be false here.
torch::Tensor linear_on(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt, bool amx) {
  TORCH_CHECK(!amx, "linear: this CPU cannot use AMX tiles");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear: shapes do not fit");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.scalar_type() == w.scalar_type(), "linear: layout");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  torch::Tensor bias_f;
  const float* bias = nullptr;
  if (bias_opt.has_value() && bias_opt->defined()) {
    bias_f = bias_opt->to(torch::kFloat32).contiguous();
    bias = bias_f.data_ptr<float>();
  }
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
