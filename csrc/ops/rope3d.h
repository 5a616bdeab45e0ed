// flex::rope3d: argument checks and parameter packing shared by its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include "flex/params.h"
#include "ops/rope_tables.h"

namespace flex {

struct Rope3dCall {
  CheckedTables tables;  // keeps the tables the parameters point into alive
  at::Tensor out;
  Rope3dParams params;
};

// Checks the arguments (ValueError naming the argument), allocates out, fills the parameters.
Rope3dCall prepare_rope3d(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                          const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                          int64_t frame_offset);

}  // namespace flex
