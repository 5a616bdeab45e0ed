// CPU kernel of flex::rope3d: one task per token, every head of the token rotated in turn.
// Arguments are checked by csrc/ops/rope3d.cpp.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/row_ops.h"
#include "ops/rope3d.h"

namespace flex::cpu {
namespace {

template <typename scalar_t, typename opmath_t>
void rope3d_kernel(const Rope3dParams& p) {
  const auto* x = static_cast<const scalar_t*>(p.x);
  auto* out = static_cast<scalar_t*>(p.out);
  const int64_t n_tokens = p.batch * p.tokens;
  const int64_t row_elems = p.heads * p.head_dim;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_elems));
  at::parallel_for(0, n_tokens, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> buf(p.head_dim);
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / p.tokens;
      const int64_t t = bt - b * p.tokens;
      const TokenPos pos = token_position(t, p.grid_h, p.grid_w);
      const scalar_t* xt = x + b * p.x_stride.b + t * p.x_stride.t;
      scalar_t* ot = out + bt * row_elems;
      for (int64_t h = 0; h < p.heads; ++h) {
        const TokenCosSin cs = token_cos_sin(p.tables, h, p.frame_offset + pos.f, pos.h, pos.w, true);
        norm_rotate_row<scalar_t, opmath_t>(xt + h * p.x_stride.h, ot + h * p.head_dim, buf.data(),
                                            p.head_dim, cs, p.tables.planes, opmath_t(1), nullptr);
      }
    }
  });
}

at::Tensor rope3d_cpu(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                      const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w, int64_t frame_offset) {
  const Rope3dCall c = prepare_rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset);
  if (c.out.numel() > 0) {
    dispatch_dtype(c.params.dtype, "rope3d", [&](auto scalar, auto opmath) {
      rope3d_kernel<decltype(scalar), decltype(opmath)>(c.params);
    });
  }
  return c.out;
}

}  // namespace
}  // namespace flex::cpu

TORCH_LIBRARY_IMPL(flex, CPU, m) {
  m.impl("rope3d", &flex::cpu::rope3d_cpu);
}
