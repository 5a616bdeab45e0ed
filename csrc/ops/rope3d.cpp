// flex::rope3d: its schema, argument checks and parameter packing. The kernels register
// themselves: csrc/cpu/rope3d_kernel.cpp (CPU), csrc/cuda/rope3d_binding.cpp (CUDA).
#include "ops/rope3d.h"

#include <ATen/Functions.h>
#include <torch/library.h>

#include "ops/checks.h"

namespace flex {

Rope3dCall prepare_rope3d(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                          const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                          int64_t frame_offset) {
  const char* op = "rope3d";
  check_same_device(op, "x", x, {{"freqs_t", &freqs_t}, {"freqs_h", &freqs_h}, {"freqs_w", &freqs_w}});
  const RopeGrid grid = check_rope_input(op, "x", x, grid_h, grid_w);
  Rope3dCall c;
  c.tables = check_tables(op, "x", x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset,
                          grid.n_frames);
  c.out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  Rope3dParams& p = c.params;
  p.x = x.const_data_ptr();
  p.out = c.out.data_ptr();
  p.batch = x.size(0);
  p.tokens = x.size(1);
  p.heads = x.size(2);
  p.head_dim = x.size(3);
  p.x_stride = strides3(x);
  p.tables = c.tables.tables;
  p.grid_h = grid_h;
  p.grid_w = grid_w;
  p.frame_offset = frame_offset;
  p.dtype = dtype_of(op, "x", x);
  return c;
}

}  // namespace flex

TORCH_LIBRARY_FRAGMENT(flex, m) {
  m.set_python_module("flex._extension");  // where the fake (meta) kernel is registered
  m.def(
      "rope3d(Tensor x, Tensor freqs_t, Tensor freqs_h, Tensor freqs_w, int grid_h, int grid_w, "
      "int frame_offset) -> Tensor");
}
