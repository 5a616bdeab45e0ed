// flex::norm_rope_cache_write: its schema, argument checks and parameter packing. The kernels
// register themselves: csrc/cpu/norm_rope_cache_write_kernel.cpp (CPU),
// csrc/cuda/norm_rope_cache_write_binding.cpp (CUDA).
#include "ops/norm_rope_cache_write.h"

#include <ATen/Functions.h>
#include <torch/library.h>

#include <cmath>

#include "ops/checks.h"

namespace flex {
namespace {

// An optional RMSNorm weight: H*D float elements (any shape), as a contiguous copy in the
// compute type (float64 for float64 inputs, float32 otherwise).
at::Tensor checked_weight(const char* op, const char* name, const std::optional<at::Tensor>& w,
                          int64_t width, at::ScalarType compute) {
  if (!w.has_value() || !w->defined()) return at::Tensor();
  FLEX_CHECK(w->numel() == width, name, " must have H*D = ", width, " elements, got shape ", w->sizes());
  const at::ScalarType t = w->scalar_type();
  FLEX_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble, name,
             " must be a float tensor (float32, float16, bfloat16 or float64), got ", t);
  return w->to(compute).contiguous();
}

}  // namespace

NormRopeCacheCall prepare_norm_rope_cache_write(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& frame_slots, bool rotate_k_temporal) {
  const char* op = "norm_rope_cache_write";
  const at::Tensor none;
  check_same_device(op, "q", q,
                    {{"k", &k}, {"v", &v}, {"norm_q_weight", norm_q_weight ? &*norm_q_weight : &none},
                     {"norm_k_weight", norm_k_weight ? &*norm_k_weight : &none}, {"freqs_t", &freqs_t},
                     {"freqs_h", &freqs_h}, {"freqs_w", &freqs_w}, {"k_cache", &k_cache},
                     {"v_cache", &v_cache}, {"frame_slots", &frame_slots}});
  const RopeGrid grid = check_rope_input(op, "q", q, grid_h, grid_w);
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3);
  const int64_t tpf = grid.tokens_per_frame;
  for (const NamedTensor& t : {NamedTensor{"k", &k}, NamedTensor{"v", &v}}) {
    FLEX_CHECK(t.tensor->sizes() == q.sizes(), t.name, " must have q's shape ", q.sizes(), ", got ",
               t.tensor->sizes());
    check_same_dtype(op, t.name, *t.tensor, "q", q);
    check_last_dim_contiguous(op, t.name, *t.tensor);
  }
  NormRopeCacheCall c;
  const at::ScalarType compute = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  c.weight_q = checked_weight(op, "norm_q_weight", norm_q_weight, H * D, compute);
  c.weight_k = checked_weight(op, "norm_k_weight", norm_k_weight, H * D, compute);
  FLEX_CHECK(eps > 0.0 && std::isfinite(eps), "eps must be > 0 and finite, got ", eps);

  for (const NamedTensor& t : {NamedTensor{"k_cache", &k_cache}, NamedTensor{"v_cache", &v_cache}}) {
    check_4d(op, t.name, *t.tensor);
    const at::Tensor& cache = *t.tensor;
    FLEX_CHECK(cache.size(0) == B && cache.size(2) == H && cache.size(3) == D && cache.size(1) % tpf == 0,
               t.name, " must be [B, n_slots * grid_h * grid_w, H, D] = [", B, ", n_slots * ", tpf, ", ",
               H, ", ", D, "], got shape ", cache.sizes());
    check_same_dtype(op, t.name, cache, "q", q);
    FLEX_CHECK(cache.is_contiguous(), t.name, " must be contiguous");
    for (const NamedTensor& in : {NamedTensor{"q", &q}, NamedTensor{"k", &k}, NamedTensor{"v", &v}}) {
      check_no_overlap(op, t.name, cache, in.name, *in.tensor);
    }
  }
  FLEX_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache shape ", v_cache.sizes(),
             " must match k_cache ", k_cache.sizes());
  check_no_overlap(op, "k_cache", k_cache, "v_cache", v_cache);
  const int64_t n_slots = k_cache.size(1) / tpf;

  FLEX_CHECK(frame_slots.dim() == 1 && frame_slots.size(0) == grid.n_frames,
             "frame_slots must be 1-D with one slot per chunk frame (", grid.n_frames, "), got shape ",
             frame_slots.sizes());
  FLEX_CHECK(frame_slots.scalar_type() == at::kInt || frame_slots.scalar_type() == at::kLong,
             "frame_slots must be int32 or int64, got ", frame_slots.scalar_type());
  c.slots = frame_slots.to(at::kLong).contiguous();
  if (c.slots.device().is_cpu()) {
    const int64_t* s = c.slots.const_data_ptr<int64_t>();
    for (int64_t f = 0; f < grid.n_frames; ++f) {
      FLEX_CHECK(s[f] >= 0 && s[f] < n_slots, "frame_slots[", f, "] = ", s[f],
                 " is out of range for a cache of ", n_slots, " slots");
    }
  }

  c.tables = check_tables(op, "q", q, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset,
                          grid.n_frames);
  c.q_out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));

  NormRopeCacheParams& p = c.params;
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.batch = B;
  p.tokens = q.size(1);
  p.heads = H;
  p.head_dim = D;
  p.q_stride = strides3(q);
  p.k_stride = strides3(k);
  p.v_stride = strides3(v);
  p.norm_q_weight = c.weight_q.defined() ? c.weight_q.const_data_ptr() : nullptr;
  p.norm_k_weight = c.weight_k.defined() ? c.weight_k.const_data_ptr() : nullptr;
  p.eps = eps;
  p.tables = c.tables.tables;
  p.grid_h = grid_h;
  p.grid_w = grid_w;
  p.frame_offset = frame_offset;
  p.q_out = c.q_out.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.cache_tokens = k_cache.size(1);
  p.frame_slots = c.slots.const_data_ptr<int64_t>();
  p.n_slots = n_slots;
  p.rotate_k_temporal = rotate_k_temporal;
  p.dtype = dtype_of(op, "q", q);
  return c;
}

}  // namespace flex

TORCH_LIBRARY_FRAGMENT(flex, m) {
  m.set_python_module("flex._extension");  // where the fake (meta) kernel is registered
  m.def(
      "norm_rope_cache_write(Tensor q, Tensor k, Tensor v, Tensor? norm_q_weight, "
      "Tensor? norm_k_weight, float eps, Tensor freqs_t, Tensor freqs_h, Tensor freqs_w, "
      "int grid_h, int grid_w, int frame_offset, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor frame_slots, bool rotate_k_temporal) -> Tensor");
}
