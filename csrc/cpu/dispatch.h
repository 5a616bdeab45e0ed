// Map flex::DType to the CPU element type and its compute type.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "flex/params.h"

namespace flex::cpu {

// Calls fn(scalar_t{}, opmath_t{}) for the element type of dtype.
template <typename Fn>
inline void dispatch_dtype(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(float{}, float{}); break;
    case DType::kFloat16: fn(c10::Half{}, float{}); break;
    case DType::kBFloat16: fn(c10::BFloat16{}, float{}); break;
    case DType::kFloat64: fn(double{}, double{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype");
  }
}

}  // namespace flex::cpu
