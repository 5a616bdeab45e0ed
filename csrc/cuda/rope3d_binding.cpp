// CUDA implementation of flex::rope3d: the checks of csrc/ops/rope3d.cpp, device guard, current
// stream, then the framework-free launcher of csrc/cuda/rope3d_kernel.cu.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/check_launch.h"
#include "cuda/launch.h"
#include "ops/rope3d.h"

namespace flex::cuda {
namespace {

at::Tensor rope3d_cuda(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                       const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                       int64_t frame_offset) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Rope3dCall c = prepare_rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset);
  if (c.out.numel() > 0) {
    check_launch("rope3d", rope3d(c.params, c10::cuda::getCurrentCUDAStream().stream()));
  }
  return c.out;
}

}  // namespace
}  // namespace flex::cuda

TORCH_LIBRARY_IMPL(flex, CUDA, m) {
  m.impl("rope3d", &flex::cuda::rope3d_cuda);
}
