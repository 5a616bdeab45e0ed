// CPU kernel of flex::norm_rope_cache_write: one pass per token.
//
// For q and k: the sum of squares over the token's full H*D width (if a norm weight is given),
// then normalise + rotate + store head by head (q to q_out, k to its cache slot); v is copied to
// its cache slot. Arguments, slot indices included, are checked by
// csrc/ops/norm_rope_cache_write.cpp.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/row_ops.h"
#include "ops/norm_rope_cache_write.h"

namespace flex::cpu {
namespace {

// Normalises and rotates one token's H head rows; frame_row, pos and rotate_temporal say which
// (cos, sin) rows each head takes (flex/rope_math.h).
template <typename scalar_t, typename opmath_t>
void norm_rope_token(const scalar_t* in, const Strides3& stride, scalar_t* out, const NormRopeCacheParams& p,
                     const opmath_t* weight, int64_t frame_row, const TokenPos& pos, bool rotate_temporal,
                     opmath_t* buf) {
  opmath_t inv_rms = 1;
  if (weight != nullptr) {
    opmath_t sum_sq = 0;
    for (int64_t h = 0; h < p.heads; ++h) {
      sum_sq += sum_squares<scalar_t, opmath_t>(in + h * stride.h, p.head_dim);
    }
    inv_rms = rms_inverse<opmath_t>(sum_sq, p.heads * p.head_dim, static_cast<opmath_t>(p.eps));
  }
  for (int64_t h = 0; h < p.heads; ++h) {
    const TokenCosSin cs = token_cos_sin(p.tables, h, frame_row, pos.h, pos.w, rotate_temporal);
    norm_rotate_row<scalar_t, opmath_t>(in + h * stride.h, out + h * p.head_dim, buf, p.head_dim, cs,
                                        p.tables.planes, inv_rms,
                                        weight != nullptr ? weight + h * p.head_dim : nullptr);
  }
}

template <typename scalar_t, typename opmath_t>
void norm_rope_cache_kernel(const NormRopeCacheParams& p) {
  const auto* q = static_cast<const scalar_t*>(p.q);
  const auto* k = static_cast<const scalar_t*>(p.k);
  const auto* v = static_cast<const scalar_t*>(p.v);
  auto* q_out = static_cast<scalar_t*>(p.q_out);
  auto* k_cache = static_cast<scalar_t*>(p.k_cache);
  auto* v_cache = static_cast<scalar_t*>(p.v_cache);
  const auto* norm_q_weight = static_cast<const opmath_t*>(p.norm_q_weight);
  const auto* norm_k_weight = static_cast<const opmath_t*>(p.norm_k_weight);
  const int64_t tpf = p.grid_h * p.grid_w;
  const int64_t row_elems = p.heads * p.head_dim;
  const int64_t n_tokens = p.batch * p.tokens;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, row_elems));
  at::parallel_for(0, n_tokens, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> buf(p.head_dim);
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / p.tokens;
      const int64_t t = bt - b * p.tokens;
      const TokenPos pos = token_position(t, p.grid_h, p.grid_w);
      const int64_t frame_row = p.frame_offset + pos.f;
      const int64_t cache_token = b * p.cache_tokens + p.frame_slots[pos.f] * tpf + (t - pos.f * tpf);

      norm_rope_token<scalar_t, opmath_t>(q + b * p.q_stride.b + t * p.q_stride.t, p.q_stride,
                                          q_out + bt * row_elems, p, norm_q_weight, frame_row, pos, true,
                                          buf.data());
      norm_rope_token<scalar_t, opmath_t>(k + b * p.k_stride.b + t * p.k_stride.t, p.k_stride,
                                          k_cache + cache_token * row_elems, p, norm_k_weight, frame_row, pos,
                                          p.rotate_k_temporal, buf.data());

      const scalar_t* vt = v + b * p.v_stride.b + t * p.v_stride.t;
      scalar_t* vc = v_cache + cache_token * row_elems;
      for (int64_t h = 0; h < p.heads; ++h) {
        std::memcpy(vc + h * p.head_dim, vt + h * p.v_stride.h, sizeof(scalar_t) * p.head_dim);
      }
    }
  });
}

at::Tensor norm_rope_cache_write_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, at::Tensor& k_cache, at::Tensor& v_cache,
    const at::Tensor& frame_slots, bool rotate_k_temporal) {
  const NormRopeCacheCall c = prepare_norm_rope_cache_write(
      q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
      frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal);
  if (c.q_out.numel() > 0) {
    dispatch_dtype(c.params.dtype, "norm_rope_cache_write", [&](auto scalar, auto opmath) {
      norm_rope_cache_kernel<decltype(scalar), decltype(opmath)>(c.params);
    });
  }
  return c.q_out;
}

}  // namespace
}  // namespace flex::cpu

TORCH_LIBRARY_IMPL(flex, CPU, m) {
  m.impl("norm_rope_cache_write", &flex::cpu::norm_rope_cache_write_cpu);
}
