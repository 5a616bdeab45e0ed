// flex::norm_rope_cache_write: argument checks and parameter packing shared by its CPU and CUDA
// kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "flex/params.h"
#include "ops/rope_tables.h"

namespace flex {

struct NormRopeCacheCall {
  CheckedTables tables;                   // temporaries the parameters point into ...
  at::Tensor weight_q, weight_k, slots;   // ... kept alive by the call
  at::Tensor q_out;
  NormRopeCacheParams params;
};

// Checks the arguments (ValueError naming the argument), allocates q_out, fills the parameters.
// On CPU the slot values are range-checked; on other devices they are not read (no host
// synchronisation) and the kernels skip the cache writes of out-of-range slots.
NormRopeCacheCall prepare_norm_rope_cache_write(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& frame_slots, bool rotate_k_temporal);

}  // namespace flex
