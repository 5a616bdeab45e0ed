// Tiles of the CPU attention: strided matrix views, dtype-converting copies and the VNNI
// packing of key tiles for the 16-bit GEMMs.
#pragma once

#include <ATen/Functions.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace flex::cpu::attention {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A [rows, cols] matrix view (row stride ld) of memory the caller owns.
template <typename scalar_t>
at::Tensor matrix(const scalar_t* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<scalar_t*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
}

// dst[rows, cols] (row stride ld_dst) = src[rows, cols] (row stride ld_src), converting the
// dtype through ATen's vectorised copy kernel.
template <typename in_t, typename out_t>
void copy_tile(const in_t* src, int64_t ld_src, out_t* dst, int64_t ld_dst, int64_t rows, int64_t cols) {
  matrix(dst, rows, cols, ld_dst).copy_(matrix(src, rows, cols, ld_src));
}

// VNNI packing of 16-bit tiles (pairs of consecutive reduction-dim elements side by side):
// B operand [K, N] -> packed [K/2, ldb, 2], pairs moved as 32-bit words. The values' packing
// is a row kernel (cpu/attention/softmax_rows.h).
//
// Key rows [cols, d] (row stride ld) are the B operand K^T [d, cols]: packed[i/2][c][i%2] = k[c][i].
inline void pack_keys_vnni(const uint16_t* k, int64_t ld, int64_t cols, int64_t d, uint16_t* packed,
                           int64_t ldb) {
  auto* out = reinterpret_cast<uint32_t*>(packed);
  constexpr int64_t kTile = 16;
  for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
    const int64_t c1 = std::min(cols, c0 + kTile);
    for (int64_t i2 = 0; i2 < d / 2; ++i2) {
      for (int64_t c = c0; c < c1; ++c) {
        uint32_t pair;
        std::memcpy(&pair, k + c * ld + 2 * i2, sizeof(pair));
        out[i2 * ldb + c] = pair;
      }
    }
  }
}

}  // namespace flex::cpu::attention
