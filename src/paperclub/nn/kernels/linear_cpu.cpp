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

namespace {

constexpr int64_t kRowsPerTask = 16;  // weight rows per parallel work item

template <int NB, int MB>
inline void tile_bf16(const uint16_t* x, const uint16_t* w, const float* bias, uint16_t* y, int64_t K, int64_t N,
                      int64_t n0, int64_t m0) {
  __m512 acc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh wv[NB];
    for (int i = 0; i < NB; ++i) wv[i] = (__m512bh)_mm512_loadu_si512(w + (n0 + i) * K + k);
    for (int j = 0; j < MB; ++j) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + j) * K + k);
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[i]);
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) {
      float v = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[n0 + i] : 0.f);
      y[(m0 + j) * N + n0 + i] = c10::BFloat16(v).x;  // round to nearest even
    }
}

template <int NB, int MB>
inline void tile_f32(const float* x, const float* w, const float* bias, float* y, int64_t K, int64_t N, int64_t n0,
                     int64_t m0) {
  __m512 acc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 wv[NB];
    for (int i = 0; i < NB; ++i) wv[i] = _mm512_loadu_ps(w + (n0 + i) * K + k);
    for (int j = 0; j < MB; ++j) {
      __m512 xv = _mm512_loadu_ps(x + (m0 + j) * K + k);
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm512_fmadd_ps(xv, wv[i], acc[i][j]);
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) y[(m0 + j) * N + n0 + i] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[n0 + i] : 0.f);
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

torch::Tensor linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt) {
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
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  if (x.scalar_type() == torch::kBFloat16) {
    TORCH_CHECK(K % 32 == 0, "linear: bf16 needs K % 32 == 0");
    auto X = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    auto W = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    auto Y = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
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

torch::Tensor attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                        int64_t S, c10::optional<torch::Tensor> mask_opt, double scale);  // attention_cpu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "batch-invariant linear (AVX-512)");
  m.def("attention", &attention, "batch-invariant attention over a slot KV cache (AVX-512)");
}
