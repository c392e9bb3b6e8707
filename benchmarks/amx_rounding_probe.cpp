// Does an AMX tile product (TDPBF16PS) round like the AVX-512 dot product (VDPBF16PS), or like any exact model of
// the same sums? If it did, decode could use AVX-512 at batch 1 and AMX for more rows and stay bit-identical.
//
//   g++ -O2 -march=native -mamx-tile -mamx-bf16 -mavx512bf16 benchmarks/amx_rounding_probe.cpp -o /tmp/amx_probe
//   /tmp/amx_probe
//
// Probe 1: 200 x 16 dot products of length 576 (a decode linear's K), weights as A tiles, x as a VNNI B tile,
// against VDPBF16PS over the same pairs, in its native pair order and with each pair swapped (the order the AMX
// pseudo-code gives). Probe 2: 2000 x 16 single tile products (32 terms plus an accumulator) against six exact
// scalar models of the rounding.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool same(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

void load_config() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
  _tile_loadconfig(&c);
}

void probe_long(std::mt19937& g) {
  constexpr int K = 576, N = 16;
  std::normal_distribution<float> d(0, 1);
  int total = 0, diff_swapped = 0, diff_native = 0;
  for (int trial = 0; trial < 200; ++trial) {
    alignas(64) uint16_t W[N * K], x[K], B[(K / 2) * 32] = {};
    for (auto& w : W) w = to_bf16(d(g) * (trial % 3 == 0 ? 100.f : 0.05f));
    for (auto& v : x) v = to_bf16(d(g));
    for (int kk = 0; kk < K / 2; ++kk) B[kk * 32] = x[2 * kk], B[kk * 32 + 1] = x[2 * kk + 1];
    load_config();
    _tile_zero(0);
    for (int k = 0; k < K; k += 32) {
      _tile_loadd(2, W + k, K * 2);
      _tile_loadd(6, B + (k / 2) * 32, 64);
      _tile_dpbf16ps(0, 2, 6);
    }
    alignas(64) float C[256];
    _tile_stored(0, C, 64);
    __m512 swapped = _mm512_setzero_ps(), native = _mm512_setzero_ps();
    for (int kk = 0; kk < K / 2; ++kk) {
      alignas(64) uint32_t pairs[16];
      for (int n = 0; n < 16; ++n) std::memcpy(&pairs[n], W + n * K + 2 * kk, 4);
      const __m512i w = _mm512_load_si512(pairs);
      uint32_t xp;
      std::memcpy(&xp, x + 2 * kk, 4);
      const __m512i xv = _mm512_set1_epi32(static_cast<int>(xp));
      native = _mm512_dpbf16_ps(native, (__m512bh)w, (__m512bh)xv);
      swapped = _mm512_dpbf16_ps(swapped, (__m512bh)_mm512_rol_epi32(w, 16), (__m512bh)_mm512_rol_epi32(xv, 16));
    }
    alignas(64) float s[16], n_[16];
    _mm512_store_ps(s, swapped);
    _mm512_store_ps(n_, native);
    for (int n = 0; n < 16; ++n, ++total) {
      diff_swapped += !same(C[n * 16], s[n]);
      diff_native += !same(C[n * 16], n_[n]);
    }
  }
  std::printf("probe 1, %d dot products of length %d: AMX != VDPBF16PS in %d (pairs swapped) and %d (native)\n",
              total, K, diff_swapped, diff_native);
}

void probe_models(std::mt19937& g) {
  constexpr int K = 32;
  std::normal_distribution<float> d(0, 1);
  const char* names[6] = {"all 33 terms exact, rounded once", "32 products exact, rounded, + acc",
                          "per pair exact, sequential", "pair sums rounded, sequential",
                          "pair sums rounded, tree, + acc", "per product, sequential"};
  int diff[6] = {}, total = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    alignas(64) uint16_t W[16 * K], x[K], B[16 * 32] = {};
    for (auto& w : W) w = to_bf16(d(g) * std::exp(d(g) * 2));
    for (auto& v : x) v = to_bf16(d(g));
    for (int kk = 0; kk < K / 2; ++kk) B[kk * 32] = x[2 * kk], B[kk * 32 + 1] = x[2 * kk + 1];
    const float acc = d(g);
    alignas(64) float C[256];
    for (auto& c : C) c = acc;
    load_config();
    _tile_loadd(0, C, 64);
    _tile_loadd(2, W, K * 2);
    _tile_loadd(6, B, 64);
    _tile_dpbf16ps(0, 2, 6);
    _tile_stored(0, C, 64);
    for (int n = 0; n < 16; ++n, ++total) {
      const float amx = C[n * 16];
      double p[K];
      for (int k = 0; k < K; ++k) p[k] = static_cast<double>(from_bf16(W[n * K + k])) * from_bf16(x[k]);
      double all = acc, prods = 0;
      for (int k = 0; k < K; ++k) all += p[k], prods += p[k];
      float pair_exact = acc, pair_rounded = acc, elem = acc, q[16];
      for (int kk = 0; kk < 16; ++kk) {
        pair_exact = static_cast<float>(static_cast<double>(pair_exact) + p[2 * kk] + p[2 * kk + 1]);
        q[kk] = static_cast<float>(p[2 * kk] + p[2 * kk + 1]);
        pair_rounded += q[kk];
        elem += static_cast<float>(p[2 * kk]);
        elem += static_cast<float>(p[2 * kk + 1]);
      }
      for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; ++i) q[i] += q[i + w];
      const float models[6] = {static_cast<float>(all), static_cast<float>(prods) + acc, pair_exact, pair_rounded,
                               acc + q[0], elem};
      for (int m = 0; m < 6; ++m) diff[m] += !same(amx, models[m]);
    }
  }
  std::printf("probe 2, %d single tile products (32 terms + accumulator), outputs that differ from AMX:\n", total);
  for (int m = 0; m < 6; ++m) std::printf("  %-36s %d\n", names[m], diff[m]);
}

}  // namespace

int main() {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
    std::puts("no AMX tile state on this machine");
    return 1;
  }
  std::mt19937 g(1);
  probe_long(g);
  probe_models(g);
  _tile_release();
  return 0;
}
