// The AMX tile configuration (palette 1) that `_tile_loadconfig` reads: per tile register its rows and bytes per
// row. Shared by the AMX kernels (amx_cpu.cpp, attention_amx.cpp), each of which fills in its own shapes.
#pragma once
#include <cstdint>

namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

}  // namespace
