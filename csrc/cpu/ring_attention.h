// CPU ring-buffer attention (flash-style, BLAS inner products); see ring_attention.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace flex::cpu {

// Flash-style attention over a ring-buffer cache; see csrc/cpu/ring_attention.cpp.
struct RingAttentionArgs {
  at::Tensor q, k_cache, v_cache;  // [B, Tq, H, D], [B, Tk, H, D]; last dims contiguous
  const int64_t* slot_frame;       // [n_slots]
  int64_t tokens_per_frame, q_first_frame, chunk_frames;
  double scale;
  const float* key_freqs_t;        // [n_slots, key_planes_t, 2] or nullptr
  int64_t key_planes_t;
  at::Tensor out;                  // [B, Tq, H, D] contiguous, q's dtype
  float* lse;                      // [B, H, Tq] or nullptr
};

void ring_attention(const RingAttentionArgs& a);

}  // namespace flex::cpu
