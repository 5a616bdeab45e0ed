// flex::ring_attention: argument checks and parameter packing of its (CPU) kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "flex/params.h"

namespace flex {

struct RingAttentionCall {
  at::Tensor frames, key_freqs;  // int64 / float32 copies the parameters point into
  at::Tensor out, lse;
  RingAttentionParams params;
};

// Checks the arguments (ValueError naming the argument), allocates out and lse, fills the
// parameters.
RingAttentionCall prepare_ring_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                         const at::Tensor& v_cache, const at::Tensor& slot_frame,
                                         int64_t tokens_per_frame, int64_t q_first_frame,
                                         int64_t chunk_frames, double scale,
                                         const std::optional<at::Tensor>& key_freqs_t,
                                         bool return_lse);

}  // namespace flex
