// CUDA implementation of flex::norm_rope_cache_write: the checks of
// csrc/ops/norm_rope_cache_write.cpp, device guard, current stream, then the framework-free
// launcher of csrc/cuda/norm_rope_cache_write_kernel.cu.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "cuda/check_launch.h"
#include "cuda/launch.h"
#include "ops/norm_rope_cache_write.h"

namespace flex::cuda {
namespace {

at::Tensor norm_rope_cache_write_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, at::Tensor& k_cache, at::Tensor& v_cache,
    const at::Tensor& frame_slots, bool rotate_k_temporal) {
  const c10::cuda::CUDAGuard guard(q.device());
  const NormRopeCacheCall c = prepare_norm_rope_cache_write(
      q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
      frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal);
  if (c.q_out.numel() > 0) {
    check_launch("norm_rope_cache_write",
                 norm_rope_cache_write(c.params, c10::cuda::getCurrentCUDAStream().stream()));
  }
  return c.q_out;
}

}  // namespace
}  // namespace flex::cuda

TORCH_LIBRARY_IMPL(flex, CUDA, m) {
  m.impl("norm_rope_cache_write", &flex::cuda::norm_rope_cache_write_cuda);
}
