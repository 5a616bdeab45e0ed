// Argument validation shared by the CPU and CUDA implementations of the flex:: ops.
//
// Each prepare_* function checks the tensors of one op (raising ValueError-type errors that
// name the argument), allocates the outputs and fills the framework-free parameter block the
// kernels read. The returned struct keeps alive every temporary the parameters point into.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "flex/params.h"

namespace flex {

DType dtype_of(const char* op, const char* name, const at::Tensor& t);

struct CheckedTables {
  at::Tensor t, h, w;  // contiguous float32 copies (or the inputs themselves)
  RopeTables tables;
};

struct Rope3dCall {
  CheckedTables tables;
  at::Tensor out;
  Rope3dParams params;
};

Rope3dCall prepare_rope3d(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                          const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                          int64_t frame_offset);

struct NormRopeCacheCall {
  CheckedTables tables;
  at::Tensor q_out, weight_q, weight_k, slots;
  NormRopeCacheParams params;
};

// On CPU the slot values are range-checked here; on other devices they are not read (no host
// synchronisation): the kernels skip the cache writes of out-of-range slots.
NormRopeCacheCall prepare_norm_rope_cache_write(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& frame_slots, bool rotate_k_temporal);

}  // namespace flex
