// Row kernels of the CPU attention's online softmax, written as plain loops the compiler
// vectorises. cpu/attention/isa.cpp includes this file several times, each time inside a
// `#pragma GCC target` region with a different FLEX_ROWS_NS namespace (x86-64-v4, -v3, baseline)
// and picks one at run time. Deliberately no include guard and no #include: everything it uses
// (flex/fast_exp.h, flex/ring_mask.h, <cstring>, <cstdint>) is included before, so only these
// functions are compiled for the region's target.
#ifndef FLEX_ROWS_NS
#error "define FLEX_ROWS_NS before including softmax_rows.h"
#endif

namespace flex::cpu::attention::FLEX_ROWS_NS {

inline float row_max(const float* s, int64_t n) {
  float m = -__builtin_inff();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = s[i] > m ? s[i] : m;
  return m;
}

// s[i] = exp(s[i] - shift); returns the sum.
inline float exp_shift_sum(float* s, int64_t n, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_nonpositive(s[i] - shift);
    s[i] = e;
    sum += e;
  }
  return sum;
}

// out[i] = bf16(exp(s[i] * scale - shift)) rounded to nearest even; returns the fp32 sum.
// Probabilities are finite and in [0, 1], so no NaN / overflow handling is needed.
inline float exp_scale_sum_bf16(const float* s, int64_t n, float scale, float shift, uint16_t* out) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_nonpositive(s[i] * scale - shift);
    sum += e;
    uint32_t bits;
    std::memcpy(&bits, &e, sizeof(bits));
    bits += 0x7fffu + ((bits >> 16) & 1u);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
  return sum;
}

inline void scale_row(float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// s[i] = -inf where the key's frame is not visible before chunk_end.
inline void mask_row(float* s, const int64_t* key_frame, int64_t n, int64_t chunk_end) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) s[i] = key_visible(key_frame[i], chunk_end) ? s[i] : -__builtin_inff();
}

// Value rows [cols, d] (row stride ld) as the VNNI-packed B operand [cols_pad/2, d, 2] of the
// P V product, zero rows from cols to cols_pad (even): packed[c/2][i][c%2] = v[c][i].
inline void pack_values_vnni(const uint16_t* v, int64_t ld, int64_t cols, int64_t cols_pad, int64_t d,
                             uint16_t* packed) {
  for (int64_t c = 0; c < cols_pad; c += 2) {
    const uint16_t* r0 = c < cols ? v + c * ld : nullptr;
    const uint16_t* r1 = c + 1 < cols ? v + (c + 1) * ld : nullptr;
    uint16_t* out = packed + c * d;  // pair row c / 2 starts at (c / 2) * d * 2
    if (r0 != nullptr && r1 != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        out[2 * i] = r0[i];
        out[2 * i + 1] = r1[i];
      }
    } else {
      for (int64_t i = 0; i < d; ++i) {
        out[2 * i] = r0 != nullptr ? r0[i] : uint16_t{0};
        out[2 * i + 1] = 0;
      }
    }
  }
}

}  // namespace flex::cpu::attention::FLEX_ROWS_NS
