// CUDA implementations of the flex:: ops: argument checks (shared with CPU, csrc/ops.cpp), device
// guard, current stream, then the framework-free launchers of csrc/cuda/*.cu.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>

#include "cuda/launch.h"
#include "ops.h"

namespace flex {
namespace {

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor rope3d_cuda(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                       const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                       int64_t frame_offset) {
  const c10::cuda::CUDAGuard guard(x.device());
  Rope3dCall c = prepare_rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset);
  if (c.out.numel() > 0) {
    check_launch("rope3d", cuda::rope3d(c.params, c10::cuda::getCurrentCUDAStream().stream()));
  }
  return c.out;
}

at::Tensor norm_rope_cache_write_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, at::Tensor& k_cache, at::Tensor& v_cache,
    const at::Tensor& frame_slots, bool rotate_k_temporal) {
  const c10::cuda::CUDAGuard guard(q.device());
  NormRopeCacheCall c = prepare_norm_rope_cache_write(
      q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
      frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal);
  if (c.q_out.numel() > 0) {
    check_launch("norm_rope_cache_write",
                 cuda::norm_rope_cache_write(c.params, c10::cuda::getCurrentCUDAStream().stream()));
  }
  return c.q_out;
}

}  // namespace
}  // namespace flex

TORCH_LIBRARY_IMPL(flex, CUDA, m) {
  m.impl("rope3d", &flex::rope3d_cuda);
  m.impl("norm_rope_cache_write", &flex::norm_rope_cache_write_cuda);
}
