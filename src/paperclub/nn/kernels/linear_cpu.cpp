// Batch-invariant, bandwidth-bound linear layers for x86 CPUs with AVX-512 (BF16).
//
//   y[m, n] = sum_k x[m, k] * w[n, k] + b[n]
//
// Each output element is reduced in one fixed order that depends only on K: 32 (bf16) or 16 (fp32) lanes
// accumulate k-chunks left to right, then one horizontal sum. So a row's result is bit-identical whether it
// is computed alone (decode), with K other rows (verification) or in a batch of 16: the property that keeps
// greedy AR, SD and SSD token-identical. The weight matrix is streamed once per call for all rows, which
// is what a decode step needs to run at memory bandwidth.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <type_traits>

namespace {

// What `linear_on` checks and sets up before the kernel: x (M, K) and w (N, K) contiguous and of one dtype, the
// output y (M, N) allocated, the bias as float32 (or none).
struct LinearArgs {
  int64_t M, K, N;
  torch::Tensor y;
  torch::Tensor bias_f;  // keeps `bias` alive
  const float* bias = nullptr;
};

inline LinearArgs linear_args(const torch::Tensor& x, const torch::Tensor& w,
                              const c10::optional<torch::Tensor>& bias_opt) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear: shapes do not fit");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.scalar_type() == w.scalar_type(), "linear: layout");
  LinearArgs a{x.size(0), x.size(1), w.size(0), torch::empty({x.size(0), w.size(0)}, x.options()), {}};
  if (bias_opt.has_value() && bias_opt->defined()) {
    a.bias_f = bias_opt->to(torch::kFloat32).contiguous();
    a.bias = a.bias_f.data_ptr<float>();
  }
  return a;
}

constexpr int64_t kRowsPerTask = 16;  // weight rows per parallel work item
// Software prefetch of the weight rows this many rows ahead: the hardware prefetcher stops at 4 KiB pages,
// and a decode step is nothing but streaming weights.
constexpr int64_t kPrefetchRows = 8;

// The sum of v's 16 lanes in one fixed tree: t[i] = v[i] + v[i+8], u[j] = t[j] + t[j+4], (u0 + u2) + (u1 + u3).
// Every output element of these kernels is reduced in exactly this order, whatever the tile it falls in.
inline float reduce16(__m512 v) {
  const __m256 t = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  const __m128 w = _mm_add_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_add_ss(w, _mm_shuffle_ps(w, w, 1)));
}

// The same tree for 16 accumulators at once (a transpose by shuffles): lane 4q + t of the result is the sum of
// acc[q + 4t]. For a 4x4 tile acc[4i + j] (weight row i, x row j) that puts row j's four outputs in lanes 4j..4j+3.
inline __m512 reduce16x16(const __m512* acc) {
  __m512 s1[8], s2[4], s3[2];
  for (int p = 0; p < 8; ++p)  // halves: acc[2p] | acc[2p+1], each lane i = v[i] + v[i+8]
    s1[p] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * p], acc[2 * p + 1], 0x44),
                          _mm512_shuffle_f32x4(acc[2 * p], acc[2 * p + 1], 0xEE));
  for (int r = 0; r < 4; ++r)  // quarters: acc[4r + 0..3], each lane j = t[j] + t[j+4]
    s2[r] = _mm512_add_ps(_mm512_shuffle_f32x4(s1[2 * r], s1[2 * r + 1], 0x88),
                          _mm512_shuffle_f32x4(s1[2 * r], s1[2 * r + 1], 0xDD));
  for (int u = 0; u < 2; ++u)  // quarter q: (u0 + u2, u1 + u3) of acc[8u + q], then of acc[8u + 4 + q]
    s3[u] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * u], s2[2 * u + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(s2[2 * u], s2[2 * u + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Reduce a tile's accumulators and write y[m0 + j, n0 + i] = sum(acc[i][j]) + bias[n0 + i].
template <int NB, int MB, typename T>
inline void store_tile(__m512 (&acc)[NB][MB], const float* bias, T* y, int64_t N, int64_t n0, int64_t m0) {
  auto put = [&](int i, int j, float v) {
    v += bias ? bias[n0 + i] : 0.f;
    if constexpr (std::is_same_v<T, uint16_t>) {
      y[(m0 + j) * N + n0 + i] = c10::BFloat16(v).x;  // round to nearest even
    } else {
      y[(m0 + j) * N + n0 + i] = v;
    }
  };
  if constexpr (NB == 4 && MB == 4) {
    alignas(64) float out[16];
    _mm512_store_ps(out, reduce16x16(&acc[0][0]));
    for (int j = 0; j < 4; ++j)
      for (int i = 0; i < 4; ++i) put(i, j, out[4 * j + i]);
  } else {
    for (int i = 0; i < NB; ++i)
      for (int j = 0; j < MB; ++j) put(i, j, reduce16(acc[i][j]));
  }
}

template <int NB, int MB>
inline void tile_bf16(const uint16_t* x, const uint16_t* w, const float* bias, uint16_t* y, int64_t K, int64_t N,
                      int64_t n0, int64_t m0) {
  __m512 acc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh wv[NB];
    for (int i = 0; i < NB; ++i) {
      _mm_prefetch((const char*)(w + (n0 + i + kPrefetchRows) * K + k), _MM_HINT_T0);  // may pass the end: harmless
      wv[i] = (__m512bh)_mm512_loadu_si512(w + (n0 + i) * K + k);
    }
    for (int j = 0; j < MB; ++j) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + j) * K + k);
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[i]);
    }
  }
  store_tile<NB, MB>(acc, bias, y, N, n0, m0);
}

template <int NB, int MB>
inline void tile_f32(const float* x, const float* w, const float* bias, float* y, int64_t K, int64_t N, int64_t n0,
                     int64_t m0) {
  __m512 acc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 wv[NB];
    for (int i = 0; i < NB; ++i) {
      _mm_prefetch((const char*)(w + (n0 + i + kPrefetchRows) * K + k), _MM_HINT_T0);
      wv[i] = _mm512_loadu_ps(w + (n0 + i) * K + k);
    }
    for (int j = 0; j < MB; ++j) {
      __m512 xv = _mm512_loadu_ps(x + (m0 + j) * K + k);
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm512_fmadd_ps(xv, wv[i], acc[i][j]);
    }
  }
  store_tile<NB, MB>(acc, bias, y, N, n0, m0);
}

// Cover rows [n_begin, n_end) x all M rows of x with 4x4 tiles and 1-wide tails (same per-element order).
template <typename T, typename Tile44, typename Tile41, typename Tile14, typename Tile11>
void run_block(int64_t n_begin, int64_t n_end, int64_t M, Tile44 t44, Tile41 t41, Tile14 t14, Tile11 t11) {
  int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) t44(n, m);
    for (; m < M; ++m) t41(n, m);
  }
  for (; n < n_end; ++n) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) t14(n, m);
    for (; m < M; ++m) t11(n, m);
  }
}

}  // namespace

bool amx_available();  // amx_cpu.cpp
void amx_linear_bf16(const uint16_t* X, const uint16_t* W, const float* bias, uint16_t* Y, int64_t M, int64_t K,
                     int64_t N);

// `amx`: run bf16 on AMX tiles (callers pass amx_available(), fixed per process; tests and benchmarks compare both).
torch::Tensor linear_on(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt, bool amx) {
  const LinearArgs args = linear_args(x, w, bias_opt);
  const int64_t M = args.M, K = args.K, N = args.N;
  const torch::Tensor& y = args.y;
  const float* bias = args.bias;
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  if (x.scalar_type() == torch::kBFloat16) {
    TORCH_CHECK(K % 32 == 0, "linear: bf16 needs K % 32 == 0");
    auto X = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    auto W = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    auto Y = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
    if (amx) {
      TORCH_CHECK(amx_available(), "linear: this CPU or process cannot use AMX tiles");
      amx_linear_bf16(X, W, bias, Y, M, K, N);
      return y;
    }
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      run_block<uint16_t>(t0 * kRowsPerTask, std::min(N, t1 * kRowsPerTask), M,
          [&](int64_t n, int64_t m) { tile_bf16<4, 4>(X, W, bias, Y, K, N, n, m); },
          [&](int64_t n, int64_t m) { tile_bf16<4, 1>(X, W, bias, Y, K, N, n, m); },
          [&](int64_t n, int64_t m) { tile_bf16<1, 4>(X, W, bias, Y, K, N, n, m); },
          [&](int64_t n, int64_t m) { tile_bf16<1, 1>(X, W, bias, Y, K, N, n, m); });
    });
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32 && K % 16 == 0, "linear: fp32 needs K % 16 == 0");
    auto X = x.data_ptr<float>();
    auto W = w.data_ptr<float>();
    auto Y = y.data_ptr<float>();
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      run_block<float>(t0 * kRowsPerTask, std::min(N, t1 * kRowsPerTask), M,
          [&](int64_t n, int64_t m) { tile_f32<4, 4>(X, W, bias, Y, K, N, n, m); },
          [&](int64_t n, int64_t m) { tile_f32<4, 1>(X, W, bias, Y, K, N, n, m); },
          [&](int64_t n, int64_t m) { tile_f32<1, 4>(X, W, bias, Y, K, N, n, m); },
          [&](int64_t n, int64_t m) { tile_f32<1, 1>(X, W, bias, Y, K, N, n, m); });
    });
  }
  return y;
}

// This build reads plain (N, K) weights: nothing to pack.
torch::Tensor pack(torch::Tensor w) { return w; }
int64_t weight_out_features(const torch::Tensor& w) { return w.size(0); }
int64_t weight_in_features(const torch::Tensor& w) { return w.size(1); }

torch::Tensor linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt) {
  return linear_on(x, w, bias_opt, amx_available());  // one choice per process: every call reduces in one order
}
