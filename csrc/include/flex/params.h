// Framework-free argument blocks of FLEX's kernels: raw pointers, sizes and element strides.
//
// The torch-side argument checks (csrc/ops/<op>.cpp) validate tensors and fill these; the CPU
// kernels (csrc/cpu) and the CUDA launchers (csrc/cuda/*.cu) only read them, so the CUDA
// kernels build without torch (CMake) and can be reused from other frameworks.
#pragma once

#include <cstdint>

#include "flex/rope_math.h"

namespace flex {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Element strides of a [B, T, H, D] tensor whose last dim is contiguous.
struct Strides3 {
  int64_t b, t, h;
};

// out[B, T, H, D] (contiguous) = rope3d(x).
struct Rope3dParams {
  const void* x;
  void* out;
  int64_t batch, tokens, heads, head_dim;
  Strides3 x_stride;
  RopeTables tables;
  int64_t grid_h, grid_w, frame_offset;
  DType dtype;
};

// RMSNorm (optional) + 3D RoPE of q and k; k and v written to their ring-cache slots.
struct NormRopeCacheParams {
  const void* q;
  const void* k;
  const void* v;
  int64_t batch, tokens, heads, head_dim;
  Strides3 q_stride, k_stride, v_stride;
  const void* norm_q_weight;   // [H * D] in the compute type (float64 for float64 inputs, else
  const void* norm_k_weight;   // float32), nullptr = no norm
  double eps;
  RopeTables tables;
  int64_t grid_h, grid_w, frame_offset;
  void* q_out;                 // [B, T, H, D] contiguous
  void* k_cache;               // [B, cache_tokens, H, D] contiguous
  void* v_cache;
  int64_t cache_tokens;        // n_slots * tokens_per_frame
  const int64_t* frame_slots;  // [T / tokens_per_frame] cache slot of each chunk frame
  int64_t n_slots;
  bool rotate_k_temporal;
  DType dtype;
};

// out[B, Tq, H, D] (contiguous) = attention of q over the ring cache [B, k_tokens, H, D], keys
// masked by their slot's frame (flex/ring_mask.h); float32, float16 or bfloat16.
struct RingAttentionParams {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  int64_t batch, q_tokens, heads, head_dim, k_tokens;
  Strides3 q_stride, k_stride, v_stride;
  const int64_t* slot_frame;   // [k_tokens / tokens_per_frame] frame of each slot, -1 = empty
  int64_t tokens_per_frame, q_first_frame, chunk_frames;
  double scale;
  const float* key_freqs_t;    // [n_slots, key_planes_t, 2] (cos, sin), or one table per
  int64_t key_planes_t;        // head [n_slots, key_heads_t, key_planes_t, 2], or nullptr
  int64_t key_heads_t;         // 1: shared by every head; heads: per head
  void* out;
  float* lse;                  // [B, H, Tq] or nullptr
  DType dtype;
};

// The key_planes_t (cos, sin) pairs that rotate the keys of cache slot `slot` in head `head`.
inline const float* key_cos_sin(const RingAttentionParams& p, int64_t slot, int64_t head) {
  const int64_t row = p.key_heads_t > 1 ? slot * p.key_heads_t + head : slot;
  return p.key_freqs_t + row * p.key_planes_t * 2;
}

}  // namespace flex
