// Row-level helpers of the CPU kernels: one head row of D values at a time, in the compute
// type opmath_t (float, or double for double inputs), one rounding on store.
#pragma once

#include <cstdint>

#include "flex/rope_math.h"

namespace flex::cpu {

// Sum of squares of n values in opmath_t (the order of summation is left to the compiler).
template <typename scalar_t, typename opmath_t>
inline opmath_t sum_squares(const scalar_t* x, int64_t n) {
  opmath_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const opmath_t v = static_cast<opmath_t>(x[i]);
    acc += v * v;
  }
  return acc;
}

// out = rope(in * inv_rms * weight) for one head row; weight == nullptr means no norm.
// buf is scratch space of head_dim opmath_t values. in and out may not alias.
template <typename scalar_t, typename opmath_t>
inline void norm_rotate_row(const scalar_t* in, scalar_t* out, opmath_t* buf, int64_t head_dim,
                            const TokenCosSin& cs, const int32_t planes[3], opmath_t inv_rms,
                            const opmath_t* weight) {
  if (weight != nullptr) {
    for (int64_t d = 0; d < head_dim; ++d) {
      buf[d] = static_cast<opmath_t>(in[d]) * inv_rms * weight[d];
    }
  } else {
    for (int64_t d = 0; d < head_dim; ++d) buf[d] = static_cast<opmath_t>(in[d]);
  }
  int64_t first = 0;
  for (int a = 0; a < 3; ++a) {
    if (cs.axis[a] != nullptr) {
      rotate_planes<opmath_t>(buf + 2 * first, buf + 2 * first, cs.axis[a], planes[a]);
    }
    first += planes[a];
  }
  for (int64_t d = 0; d < head_dim; ++d) out[d] = static_cast<scalar_t>(buf[d]);
}

}  // namespace flex::cpu
