// Framework-free argument blocks of FLEX's kernels: raw pointers, sizes and element strides.
//
// The torch binding (csrc/ops.cpp, csrc/cuda/binding.cpp) validates tensors and fills these;
// the CPU kernels (csrc/cpu) and the CUDA launchers (csrc/cuda/*.cu) only read them, so the
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
  const float* norm_q_weight;  // [H * D] float32, nullptr = no norm
  const float* norm_k_weight;
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

}  // namespace flex
