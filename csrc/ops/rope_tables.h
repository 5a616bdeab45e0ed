// Checks shared by the two RoPE ops (rope3d, norm_rope_cache_write): the rotated input, the
// frame grid and the (cos, sin) tables.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "flex/rope_math.h"

namespace flex {

// The chunk layout of a RoPE input x [B, T, H, D]: T = n_frames * grid_h * grid_w.
struct RopeGrid {
  int64_t tokens_per_frame, n_frames;
};

// x is 4-D, float, with an even head dim D > 0 and a contiguous last dim; grid_h, grid_w >= 1
// and T a multiple of their product.
RopeGrid check_rope_input(const char* op, const char* name, const at::Tensor& x, int64_t grid_h,
                          int64_t grid_w);

// Contiguous float32 tables and the framework-free view of them the kernels read.
struct CheckedTables {
  at::Tensor t, h, w;
  RopeTables tables;
};

// freqs_* are float32 [rows, planes, 2] with D/2 planes in all (freqs_t may be one table per
// head of x: [rows, H, planes, 2]); the call's temporal rows
// [frame_offset, frame_offset + n_frames) and the grid's rows exist.
CheckedTables check_tables(const char* op, const char* x_name, const at::Tensor& x,
                           const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                           const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                           int64_t frame_offset, int64_t n_frames);

}  // namespace flex
