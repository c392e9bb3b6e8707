// bf16 linear layers on Intel AMX (Advanced Matrix Extensions) tiles, batch-invariant like `linear_cpu.cpp`.
//
//   y[m, n] = sum_k x[m, k] * w[n, k] + b[n]
//
// The transposed product y^T = W x^T maps onto the tile unit without repacking the weights: W's rows are the
// A tiles as they lie in memory (16 rows x 32 bf16), and x, small in decode, is packed once per call into the
// pair-interleaved ("VNNI") layout the B tile needs, padded with zero rows to a multiple of 16. Each output element
// is one dot product accumulated in fp32 by the tile unit along k in a fixed order that does not depend on how many
// rows x has: decode (1 row), verification (K+1) and a batch of 16 give bit-identical rows. AMX is chosen once per
// process (never per call), so the invariance holds for every call of a run.
//
// Trade-off, measured on the 2-core Xeon this project runs on (same process, paired, the default model's shapes):
// the tile path takes 0.37-0.45x the AVX-512 time for 16 rows (batched decode, SSD's branch fan-out), about the
// same for 5 rows (verification of K=4), and 1.12-1.2x for one row, where the AVX-512 kernel streams weights
// faster (measured before the x tiles were sized to the batch, which took 5% off a batch-1 step: BENCHMARKS.md).
// On a 5th-generation Xeon (model 207) with one set of tiles, a one-row step costs the same on either path and a
// 16-row step 0.4x the AVX-512 one. PAPERCLUB_AMX=0 keeps the AVX-512 path.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "amx_tiles.h"

namespace {

constexpr int64_t kTile = 16;         // rows of an A or C tile, columns (x rows) of a B or C tile
constexpr int64_t kKStep = 32;        // bf16 values of k per tile product (64 bytes per tile row)
constexpr int64_t kBlocksPerTask = 2; // 16-row weight blocks per work item: two C tiles share each B tile load

// tmm0, tmm1: C (fp32, 16 rows x `cols`); tmm2, tmm3: A (weights, 16 rows x 32 bf16); tmm6: B (x, 16 pair-rows x
// `cols` x 2 bf16). (Alternating two sets of A and B tiles by k-step, so that a load need not wait for the product
// still reading its register, was 1.1-1.7x slower on a 5th-generation Xeon, model 207, in every shape and batch size
// tried: BENCHMARKS.md.) `cols` is the number of
// x rows per block (16, or M when M < 16): a decode step then packs and loads one column of x instead of 16 (at one
// row the B tiles of a 1536-wide input no longer fill L1). The tile unit computes each C element on its own, so the
// width changes nothing in the sums; tests/models/test_cpu_kernels.py checks rows bit-identical at every batch size.
TileConfig make_config(int64_t cols) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = kTile;
    c.colsb[t] = 64;
  }
  c.colsb[0] = c.colsb[1] = c.colsb[6] = static_cast<uint16_t>(cols * sizeof(float));
  return c;
}

bool detect_amx() {
  const char* env = std::getenv("PAPERCLUB_AMX");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  // Linux hands out the 8 KiB tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
  return tile && bf16 && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

// One k-step: load x's B tile and the A tiles of one or two weight blocks, accumulate into C tiles 0 and 1.
// A macro because the tile intrinsics take register numbers as literal tokens.
#define PAPERCLUB_TILE_STEP(A0, A1, B, b, a0, a1, k, K)               \
  do {                                                                \
    _tile_loadd(B, (b) + (k) * cols, cols * 2 * sizeof(uint16_t));    \
    _tile_loadd(A0, (a0) + (k), (K) * sizeof(uint16_t));              \
    _tile_dpbf16ps(0, A0, B);                                         \
    if ((a1) != nullptr) {                                            \
      _tile_loadd(A1, (a1) + (k), (K) * sizeof(uint16_t));            \
      _tile_dpbf16ps(1, A1, B);                                       \
    }                                                                 \
  } while (0)

}  // namespace

bool amx_available() {
  static const bool ok = detect_amx();  // decided once per process: the kernel choice must not vary by call
  return ok;
}

void amx_linear_bf16(const uint16_t* X, const uint16_t* W, const float* bias, uint16_t* Y, int64_t M, int64_t K,
                     int64_t N) {
  TORCH_CHECK(K % kKStep == 0, "linear: bf16 needs K % 32 == 0");
  const int64_t m_blocks = (M + kTile - 1) / kTile, pairs = K / 2, cols = std::min(M, kTile);
  // x^T in B-tile layout, per block of `cols` x rows: xp[b][kk][j][p] = x[cols b + j][2kk + p], zero rows past M.
  std::vector<uint16_t> xp(m_blocks * pairs * cols * 2, 0);
  for (int64_t m = 0; m < M; ++m) {
    uint16_t* dst = xp.data() + (m / kTile) * pairs * cols * 2 + (m % kTile) * 2;
    const uint16_t* src = X + m * K;
    for (int64_t kk = 0; kk < pairs; ++kk) std::memcpy(dst + kk * cols * 2, src + 2 * kk, 2 * sizeof(uint16_t));
  }
  const int64_t n_blocks = (N + kTile - 1) / kTile;
  const int64_t tasks = (n_blocks + kBlocksPerTask - 1) / kBlocksPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    const TileConfig cfg = make_config(cols);
    _tile_loadconfig(&cfg);
    alignas(64) float out[kBlocksPerTask][kTile * kTile];
    std::vector<uint16_t> tail;  // a last block of fewer than 16 weight rows, zero-padded
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb0 = t * kBlocksPerTask, nb = std::min(kBlocksPerTask, n_blocks - nb0);
      const uint16_t* a[kBlocksPerTask] = {};
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t n0 = (nb0 + i) * kTile, rows = std::min(kTile, N - n0);
        if (rows == kTile) {
          a[i] = W + n0 * K;
        } else {
          tail.assign(kTile * K, 0);
          std::memcpy(tail.data(), W + n0 * K, rows * K * sizeof(uint16_t));
          a[i] = tail.data();
        }
      }
      const char* next = reinterpret_cast<const char*>(W + (nb0 + nb) * kTile * K);  // the next task's weights
      for (int64_t mb = 0; mb < m_blocks; ++mb) {
        const uint16_t* b = xp.data() + mb * pairs * cols * 2;
        _tile_zero(0);
        _tile_zero(1);
        // The next task's rows, 2 KiB per k-step, into L2: a task's weights (36-96 KiB) would evict the current
        // task's from L1. Past the end: harmless.
        const uint16_t* a1 = nb > 1 ? a[1] : nullptr;
        for (int64_t k = 0; k < K; k += kKStep) {
          if (mb == 0) {
            const char* p = next + k / kKStep * (kBlocksPerTask * kTile * 64);
            for (int64_t r = 0; r < kBlocksPerTask * kTile; ++r) _mm_prefetch(p + r * 64, _MM_HINT_T1);
          }
          PAPERCLUB_TILE_STEP(2, 3, 6, b, a[0], a1, k, K);
        }
        _tile_stored(0, out[0], cols * sizeof(float));
        if (nb > 1) _tile_stored(1, out[1], cols * sizeof(float));
        const int64_t m_end = std::min(kTile, M - mb * kTile);
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t n0 = (nb0 + i) * kTile, rows = std::min(kTile, N - n0);
          for (int64_t j = 0; j < m_end; ++j) {
            uint16_t* y = Y + (mb * kTile + j) * N + n0;
            for (int64_t r = 0; r < rows; ++r)
              y[r] = c10::BFloat16(out[i][r * cols + j] + (bias ? bias[n0 + r] : 0.f)).x;  // nearest even
          }
        }
      }
    }
    _tile_release();
  });
}
