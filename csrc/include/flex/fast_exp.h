// exp(x) for x <= 0 in float32, branch-free so that compilers vectorise loops calling it.
//
// Used by the CPU attention's online softmax, where x = logit - running max <= 0. Cody-Waite
// range reduction x = n ln2 + r, |r| <= ln2 / 2 (n rounded with the 1.5 * 2^23 shifter, no
// floor), then a degree-7 polynomial for e^r and 2^n built in the exponent bits. Relative
// error < 2e-7 for x >= -87; x < -87 (including -inf) returns exactly 0 (e^-87 ~ 1.6e-38 is
// below float's normal range). NaN propagates. Needs IEEE float semantics (no -ffast-math).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "flex/rope_math.h"  // FLEX_HOST_DEVICE

namespace flex {

FLEX_HOST_DEVICE inline float exp_nonpositive(float x) {
  constexpr float kLowest = -87.0f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;        // ln 2 split in a part exact in float ...
  constexpr float kLn2Lo = -2.12194440e-4f;     // ... and the remainder
  constexpr float kShifter = 12582912.0f;       // 1.5 * 2^23: adding it rounds to an integer
  constexpr int32_t kShifterBits = 0x4B400000;  // bit pattern of kShifter
  const float xc = x < kLowest ? kLowest : x;
  // n = round(x / ln2), as a float and (from the bits of t) as an integer.
  const float t = xc * kLog2e + kShifter;
  const float n = t - kShifter;
  int32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof(t_bits));
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  // e^r = 1 + r + r^2 * P(r), P fitted on [-ln2/2, ln2/2].
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  const int32_t bits = (t_bits - kShifterBits + 127) << 23;  // 2^n, n in [-126, 0]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const float y = er * two_n;
  return x < kLowest ? 0.0f : y;
}

}  // namespace flex
