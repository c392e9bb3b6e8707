// Batch-invariant linear layers for x86 CPUs without BF16 dot products: float32 fused multiply-adds on 8 lanes
// (AVX2: AMD Zen 1-3, Intel before Skylake-SP) or 16 lanes (AVX-512F+BW without BF16: Intel Skylake-SP to Ice
// Lake). The same source is compiled once per instruction set (see cpu_kernels.py):
//
//   y[m, n] = sum_k x[m, k] * w[n, k] + b[n]
//
// Weights are packed once (`pack`, when the model is loaded) into panels of L = 8 or 16 output columns, k-major
// within a panel, so that one vector load gives L columns' weights at one k (fp32) or at two consecutive k
// (bf16). The kernel is then the outer-product form of a GEMM: each vector accumulator holds L output columns of
// one x row, and every k step broadcasts x[m, k] and adds its products to P panels x R rows of accumulators.
// No horizontal sums, no reloads of x into vectors: R x values and P weight vectors feed P*R multiply-adds.
//
// The reduction order of every output element is the same whatever the tile, the batch or the thread split:
// k = 0, 1, ..., K-1, one fused multiply-add each, into an accumulator that starts at 0, then the bias, then one
// rounding to the output dtype. A row's result is bit-identical whether it is computed alone (decode), with K
// other rows (verification) or in a batch of 16, which keeps greedy AR, SD and SSD token-identical.
//
// bf16 weights are widened exactly to float32 in registers by interleaving them with zeros (`vpunpck[lh]wd`):
// within each 128-bit lane, the low four 16-bit words become four float32 lanes and the high four another vector.
// The packing puts k and k+1 of four consecutive columns in one 128-bit lane (words 0-3: k, words 4-7: k+1), so
// the low half is the panel at k and the high half the panel at k+1.
//
// Measured on a 2-core Ice Lake Xeon (AVX-512, bf16, all linears of one SmolLM2-135M step, 2 threads), against
// the previous kernel (row-major weights, 4 weight rows x 4 x rows, lane-parallel dot products and a horizontal
// sum per element): 1 row 14.0 -> 13.6 ms, 5 rows 20.6 -> 14.4 ms, 16 rows 46.3 -> 31-32 ms, 64 rows 162 -> 100.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstring>
#include <type_traits>
#include <vector>

#include "vec_avx2.h"

namespace {

constexpr int64_t kXBlock = 48;  // x rows per sweep of a task's panels: a prefill's x stays in L2
// Each panel is one sequential stream; the loop asks for the line this many bytes ahead of the one it reads. On the
// 2-core Ice Lake, 2 kB ahead made 16-row linears of streamed weights 7-16% faster and left 48 rows unchanged: the
// hardware prefetcher alone ran too close behind the loads while the multiply-adds of the first rows waited.
constexpr int64_t kPrefetchBytes = 2048;

#if defined(__AVX512F__) && defined(__AVX512BW__)
using Vec = __m512;
using IVec = __m512i;
constexpr int kLanes = 16;
constexpr int kP = 4, kR = 6;  // panels x rows per tile: 24 accumulators, 4 widened weights, 1 broadcast, 1 zero
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
inline Vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline IVec load_raw(const uint16_t* p) { return _mm512_loadu_si512((const void*)p); }
inline Vec widen_lo(IVec raw) { return _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), raw)); }
inline Vec widen_hi(IVec raw) { return _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), raw)); }
inline void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline void store(uint16_t* p, Vec v) {  // round to bf16 as c10::BFloat16 does, 8 lanes at a time
  store8(p, _mm512_castps512_ps256(v));
  store8(p + 8, _mm512_extractf32x8_ps(v, 1));
}
#else
using Vec = __m256;
using IVec = __m256i;
constexpr int kLanes = 8;
constexpr int kP = 2, kR = 4;  // 16 registers: 8 accumulators, 2 raw and 2 widened weights, 1 broadcast, 1 zero
inline Vec zero() { return _mm256_setzero_ps(); }
inline Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
inline Vec broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline IVec load_raw(const uint16_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline Vec widen_lo(IVec raw) { return _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), raw)); }
inline Vec widen_hi(IVec raw) { return _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), raw)); }
inline void store(float* p, Vec v) { store8(p, v); }
inline void store(uint16_t* p, Vec v) { store8(p, v); }
#endif

// Where a linear's operands are: x float32 (M, K) row-major, or `x16` bf16 (M, K) widened a block of rows at a
// time by each thread (`run_panels`); w packed (panels of kLanes columns, see `pack`); bias float32 padded to the
// panels' width, or null; y (M, ldy).
template <typename T>
struct Operands {
  const float* x;
  const uint16_t* x16;
  const T* w;
  const float* bias;
  T* y;
  int64_t K, ldy;
};

// y[m0 + r, 16 (p0 + p) + lane] for r < R, p < P, k in order (see the top of the file).
template <int P, int R, typename T>
inline void tile(const Operands<T>& a, int64_t p0, int64_t m0) {
  const int64_t K = a.K;
  Vec acc[R][P];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < P; ++p) acc[r][p] = zero();
  const float* x = a.x + m0 * K;
  const T* w = a.w + p0 * K * kLanes;  // panel p starts K * kLanes values after panel p - 1
  if constexpr (std::is_same_v<T, uint16_t>) {
    for (int64_t k = 0; k < K; k += 2) {
      for (int p = 0; p < P; ++p)  // a hint: it never faults, past the end of the weights included
        _mm_prefetch(reinterpret_cast<const char*>(w + p * K * kLanes + k * kLanes) + kPrefetchBytes, _MM_HINT_T0);
      IVec raw[P];
      for (int p = 0; p < P; ++p) raw[p] = load_raw(w + p * K * kLanes + k * kLanes);
      Vec wv[P];
      for (int p = 0; p < P; ++p) wv[p] = widen_lo(raw[p]);
      for (int r = 0; r < R; ++r) {
        const Vec xb = broadcast(x + r * K + k);
        for (int p = 0; p < P; ++p) acc[r][p] = fmadd(wv[p], xb, acc[r][p]);
      }
      for (int p = 0; p < P; ++p) wv[p] = widen_hi(raw[p]);
      for (int r = 0; r < R; ++r) {
        const Vec xb = broadcast(x + r * K + k + 1);
        for (int p = 0; p < P; ++p) acc[r][p] = fmadd(wv[p], xb, acc[r][p]);
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      Vec wv[P];
      for (int p = 0; p < P; ++p) wv[p] = loadu(w + p * K * kLanes + k * kLanes);
      for (int r = 0; r < R; ++r) {
        const Vec xb = broadcast(x + r * K + k);
        for (int p = 0; p < P; ++p) acc[r][p] = fmadd(wv[p], xb, acc[r][p]);
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    const int64_t n0 = (p0 + p) * kLanes;
    for (int r = 0; r < R; ++r) {
      const Vec v = a.bias ? add(acc[r][p], loadu(a.bias + n0)) : acc[r][p];
      store(a.y + (m0 + r) * a.ldy + n0, v);
    }
  }
}

// Rows [0, M) of x against P panels from p0: kR rows at a time, then the remainder in one tile.
// 8 lanes: a remainder of one row would stream the panels a second time for 4 multiply-adds per 2 loads and 4
// widenings, so a first tile of 5 rows takes it (5 x 2 accumulators, 2 raw and 2 widened weights, 1 broadcast, 1
// zero: the 16 registers). All linears of one SmolLM2-135M step on a 2-core AMD EPYC (Zen 3), same packed weights,
// shuffled alternation: 5 rows (a K=4 verification) 0.86-0.87x the time of 4 + 1 on 1 and 2 threads, 9 rows
// 0.87-0.95x; 6 rows as 3 + 3 instead of 4 + 2 was within the noise, and a 6-row tile spilled (1.12-1.18x).
template <int P, typename T>
inline void tile_column(const Operands<T>& a, int64_t M, int64_t p0) {
  int64_t m = 0;
  if constexpr (kLanes == 8) {
    if (M % kR == 1 && M > kR) tile<P, 5>(a, p0, 0), m = 5;
  }
  for (; m + kR <= M; m += kR) tile<P, kR>(a, p0, m);
  switch (M - m) {
    case 1: tile<P, 1>(a, p0, m); break;
    case 2: tile<P, 2>(a, p0, m); break;
    case 3: tile<P, 3>(a, p0, m); break;
    case 4: if constexpr (kR > 4) tile<P, 4>(a, p0, m); break;
    case 5: if constexpr (kR > 5) tile<P, 5>(a, p0, m); break;
    default: break;
  }
}

// x[0, n) widened exactly from bf16 to float32, 8 at a time.
inline void widen_rows(const uint16_t* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load8(x + i));
  for (; i < n; ++i) {
    const uint32_t bits = uint32_t(x[i]) << 16;
    std::memcpy(out + i, &bits, 4);
  }
}

// Panels [pb, pe) x all M rows of x, x in blocks of kXBlock rows. A bf16 x is widened one block at a time into a
// buffer of this thread: inside the parallel region, not before it, so no thread waits on a serial loop over the
// whole x (a 300-token prefill spent 11% of its time there) and nothing is allocated per call.
template <typename T>
void run_panels(const Operands<T>& a, int64_t M, int64_t pb, int64_t pe) {
  thread_local std::vector<float> widened;
  for (int64_t m0 = 0; m0 < M; m0 += kXBlock) {
    Operands<T> b = a;
    const int64_t mb = std::min(kXBlock, M - m0);
    if (a.x16 != nullptr) {
      if (widened.size() < size_t(mb * a.K)) widened.resize(mb * a.K);
      widen_rows(a.x16 + m0 * a.K, widened.data(), mb * a.K);
      b.x = widened.data();
    } else {
      b.x = a.x + m0 * a.K;
    }
    b.y = a.y + m0 * a.ldy;
    int64_t p = pb;
    for (; p + kP <= pe; p += kP) tile_column<kP>(b, mb, p);
    if constexpr (kP > 3) {
      if (pe - p == 3) tile_column<3>(b, mb, p), p += 3;
    }
    if constexpr (kP > 2) {
      if (pe - p == 2) tile_column<2>(b, mb, p), p += 2;
    }
    if (p < pe) tile_column<1>(b, mb, p);
  }
}

// Each thread takes one contiguous, equal share of the panels (at::parallel_for splits [0, panels) evenly): with
// work items of 8 panels, a 576-column matrix (36 panels, 5 items) split 3:2 between two threads.
template <typename T>
void linear_panels(const Operands<T>& a, int64_t M, int64_t panels) {
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) { run_panels<T>(a, M, p0, p1); });
}

bool is_packed(const torch::Tensor& w) { return w.dim() == 3; }

}  // namespace

bool amx_available() { return false; }  // these builds have no tile path

// w (N, K) -> panels of kLanes output columns, zero rows added up to a multiple of kLanes. fp32: (N / L, K, L),
// value [p, k, i] = w[L p + i, k]. bf16: (N / L, K / 2, 2 L), each 128-bit lane holding four columns at k then the
// same four at k + 1 (the order `widen_lo`/`widen_hi` undo).
torch::Tensor pack(torch::Tensor w) {
  TORCH_CHECK(w.dim() == 2, "pack: expected a (N, K) weight matrix");
  TORCH_CHECK(w.scalar_type() == torch::kBFloat16 || w.scalar_type() == torch::kFloat32, "pack: bf16 or fp32");
  const int64_t N = w.size(0), K = w.size(1), L = kLanes, NP = (N + L - 1) / L;
  auto wp = w.contiguous();
  if (NP * L != N) wp = torch::cat({wp, torch::zeros({NP * L - N, K}, w.options())});
  if (w.scalar_type() == torch::kFloat32) return wp.view({NP, L, K}).permute({0, 2, 1}).contiguous();
  TORCH_CHECK(K % 2 == 0, "pack: bf16 weights need an even number of columns");
  return wp.view({NP, L / 4, 4, K / 2, 2}).permute({0, 3, 1, 4, 2}).contiguous().view({NP, K / 2, 2 * L});
}

int64_t weight_out_features(const torch::Tensor& w) { return is_packed(w) ? w.size(0) * kLanes : w.size(0); }
int64_t weight_in_features(const torch::Tensor& w) {
  return is_packed(w) && w.scalar_type() == torch::kBFloat16 ? 2 * w.size(1) : w.size(1);
}

// x (M, K) and w packed by `pack` (or a plain (N, K) matrix, packed here first: same result, slower). A packed w
// gives y (M, N rounded up to kLanes); a plain one y (M, N). `amx` must be false (the signature is the AVX-512
// BF16 build's).
torch::Tensor linear_on(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt, bool amx) {
  TORCH_CHECK(!amx, "linear: this CPU cannot use AMX tiles");
  if (!is_packed(w)) {
    TORCH_CHECK(w.dim() == 2 && x.dim() == 2 && x.size(1) == w.size(1), "linear: shapes do not fit");
    const int64_t N = w.size(0);
    auto y = linear_on(x, pack(w), bias_opt, false);
    return y.size(1) == N ? y : y.narrow(1, 0, N).contiguous();
  }
  const int64_t M = x.size(0), K = weight_in_features(w), NP = w.size(0), Np = NP * kLanes;
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "linear: shapes do not fit");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.scalar_type() == w.scalar_type(), "linear: layout");
  auto y = torch::empty({M, Np}, x.options());
  torch::Tensor bias;
  if (bias_opt.has_value() && bias_opt->defined()) {
    TORCH_CHECK(bias_opt->numel() <= Np, "linear: bias longer than the output");
    bias = torch::zeros({Np}, x.options().dtype(torch::kFloat32));
    bias.narrow(0, 0, bias_opt->numel()).copy_(*bias_opt);
  }
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  if (x.scalar_type() == torch::kBFloat16) {
    const Operands<uint16_t> a{nullptr, reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                               reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), b,
                               reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), K, Np};
    linear_panels(a, M, NP);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "linear: bf16 or fp32");
    const Operands<float> a{x.data_ptr<float>(), nullptr, w.data_ptr<float>(), b, y.data_ptr<float>(), K, Np};
    linear_panels(a, M, NP);
  }
  return y;
}

torch::Tensor linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt) {
  return linear_on(x, w, bias_opt, false);
}
