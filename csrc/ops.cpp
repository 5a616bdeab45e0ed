// Schemas of the flex:: operators, their argument checks and their CPU implementations.
// The CUDA implementations are registered in csrc/cuda/binding.cpp (built when CUDA is).
#include "ops.h"

#include <ATen/Functions.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "cpu/kernels.h"
#include "cpu/ring_attention.h"

// ValueError in Python, message prefixed by the name of the op (a variable `op` in scope).
#define FLEX_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)

namespace flex {
namespace {

void check_4d(const char* op, const char* name, const at::Tensor& t) {
  FLEX_CHECK(t.dim() == 4, name, " must be 4-D [B, T, H, D], got shape ", t.sizes());
}

void check_last_dim_contiguous(const char* op, const char* name, const at::Tensor& t) {
  FLEX_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, "the last dim of ", name,
             " must be contiguous (stride 1), got strides ", t.strides());
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  FLEX_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
             ref.device());
}

using Named = std::pair<const char*, const at::Tensor*>;

Strides3 strides3(const at::Tensor& t) { return Strides3{t.stride(0), t.stride(1), t.stride(2)}; }

CheckedTables check_tables(const char* op, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                           const at::Tensor& freqs_w, const at::Tensor& x, int64_t grid_h,
                           int64_t grid_w, int64_t frame_offset, int64_t n_frames) {
  const char* names[3] = {"freqs_t", "freqs_h", "freqs_w"};
  const at::Tensor* in[3] = {&freqs_t, &freqs_h, &freqs_w};
  CheckedTables r;
  at::Tensor* out[3] = {&r.t, &r.h, &r.w};
  int64_t planes = 0;
  for (int a = 0; a < 3; ++a) {
    const at::Tensor& f = *in[a];
    FLEX_CHECK(f.dim() == 3 && f.size(2) == 2, names[a], " must be [N, C, 2] (cos, sin), got shape ",
               f.sizes());
    FLEX_CHECK(f.scalar_type() == at::kFloat, names[a], " must be float32, got ", f.scalar_type());
    check_same_device(op, names[a], f, "x", x);
    *out[a] = f.contiguous();
    r.tables.table[a] = out[a]->const_data_ptr<float>();
    r.tables.planes[a] = static_cast<int32_t>(f.size(1));
    r.tables.rows[a] = f.size(0);
    planes += f.size(1);
  }
  const int64_t head_dim = x.size(3);
  FLEX_CHECK(planes * 2 == head_dim, "the plane counts of freqs_t, freqs_h, freqs_w (",
             freqs_t.size(1), " + ", freqs_h.size(1), " + ", freqs_w.size(1), " = ", planes,
             ") must sum to D/2 = ", head_dim / 2);
  FLEX_CHECK(frame_offset >= 0, "frame_offset must be >= 0, got ", frame_offset);
  FLEX_CHECK(n_frames == 0 || frame_offset + n_frames <= freqs_t.size(0), "frame_offset + frames = ",
             frame_offset, " + ", n_frames, " needs ", frame_offset + n_frames,
             " temporal rows, but freqs_t has ", freqs_t.size(0), " (frame rows out of range)");
  FLEX_CHECK(grid_h <= freqs_h.size(0), "grid_h = ", grid_h, " exceeds the ", freqs_h.size(0),
             " rows of freqs_h");
  FLEX_CHECK(grid_w <= freqs_w.size(0), "grid_w = ", grid_w, " exceeds the ", freqs_w.size(0),
             " rows of freqs_w");
  return r;
}

// Checks shared by the two RoPE ops on x ([B, T, H, D]) and the frame grid; returns F.
int64_t check_rope_input(const char* op, const char* name, const at::Tensor& x, int64_t grid_h,
                         int64_t grid_w) {
  check_4d(op, name, x);
  dtype_of(op, name, x);
  FLEX_CHECK(x.size(3) > 0 && x.size(3) % 2 == 0, "head dim D of ", name,
             " must be even and positive, got shape ", x.sizes());
  check_last_dim_contiguous(op, name, x);
  FLEX_CHECK(grid_h > 0 && grid_w > 0, "grid_h and grid_w must be positive, got ", grid_h, " x ",
             grid_w);
  const int64_t tpf = grid_h * grid_w;
  FLEX_CHECK(x.size(1) % tpf == 0, "T = ", name, ".shape[1] = ", x.size(1),
             " must be a multiple of grid_h * grid_w = ", tpf);
  return x.size(1) / tpf;
}

}  // namespace

DType dtype_of(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default:
      FLEX_CHECK(false, name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  }
  return DType::kFloat32;  // unreachable
}

Rope3dCall prepare_rope3d(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                          const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                          int64_t frame_offset) {
  const char* op = "rope3d";
  const int64_t n_frames = check_rope_input(op, "x", x, grid_h, grid_w);
  Rope3dCall c;
  c.tables = check_tables(op, freqs_t, freqs_h, freqs_w, x, grid_h, grid_w, frame_offset, n_frames);
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

NormRopeCacheCall prepare_norm_rope_cache_write(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& frame_slots, bool rotate_k_temporal) {
  const char* op = "norm_rope_cache_write";
  const int64_t n_frames = check_rope_input(op, "q", q, grid_h, grid_w);
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3);
  const int64_t tpf = grid_h * grid_w;
  for (const auto& [name, t] : {Named{"k", &k}, Named{"v", &v}}) {
    FLEX_CHECK(t->sizes() == q.sizes(), name, " must have q's shape ", q.sizes(), ", got ", t->sizes());
    FLEX_CHECK(t->scalar_type() == q.scalar_type(), name, " dtype (", t->scalar_type(),
               ") must match q (", q.scalar_type(), ")");
    check_same_device(op, name, *t, "q", q);
    check_last_dim_contiguous(op, name, *t);
  }
  NormRopeCacheCall c;
  auto weight = [&](const char* name, const std::optional<at::Tensor>& w) -> at::Tensor {
    if (!w.has_value() || !w->defined()) return at::Tensor();
    FLEX_CHECK(w->dim() == 1 && w->numel() == H * D, name, " must be 1-D with H*D = ", H * D,
               " elements, got shape ", w->sizes());
    FLEX_CHECK(at::isFloatingType(w->scalar_type()), name, " must be a float tensor, got ",
               w->scalar_type());
    check_same_device(op, name, *w, "q", q);
    return w->to(at::kFloat).contiguous();
  };
  c.weight_q = weight("norm_q_weight", norm_q_weight);
  c.weight_k = weight("norm_k_weight", norm_k_weight);
  FLEX_CHECK(eps >= 0.0, "eps must be >= 0, got ", eps);

  for (const auto& [name, t] : {Named{"k_cache", &k_cache}, Named{"v_cache", &v_cache}}) {
    check_4d(op, name, *t);
    FLEX_CHECK(t->size(0) == B && t->size(2) == H && t->size(3) == D && t->size(1) % tpf == 0 &&
                   t->size(1) > 0,
               name, " must be [B, n_slots * grid_h * grid_w, H, D] = [", B, ", n_slots * ", tpf, ", ",
               H, ", ", D, "], got shape ", t->sizes());
    FLEX_CHECK(t->scalar_type() == q.scalar_type(), name, " dtype (", t->scalar_type(),
               ") must match q (", q.scalar_type(), ")");
    FLEX_CHECK(t->is_contiguous(), name, " must be contiguous");
    check_same_device(op, name, *t, "q", q);
  }
  FLEX_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache shape ", v_cache.sizes(),
             " must match k_cache ", k_cache.sizes());
  const int64_t n_slots = k_cache.size(1) / tpf;

  FLEX_CHECK(frame_slots.dim() == 1 && frame_slots.size(0) == n_frames,
             "frame_slots must be 1-D with one slot per chunk frame (", n_frames, "), got shape ",
             frame_slots.sizes());
  FLEX_CHECK(frame_slots.scalar_type() == at::kInt || frame_slots.scalar_type() == at::kLong,
             "frame_slots must be int32 or int64, got ", frame_slots.scalar_type());
  check_same_device(op, "frame_slots", frame_slots, "q", q);
  c.slots = frame_slots.to(at::kLong).contiguous();
  if (c.slots.device().is_cpu()) {
    const int64_t* s = c.slots.const_data_ptr<int64_t>();
    for (int64_t f = 0; f < n_frames; ++f) {
      FLEX_CHECK(s[f] >= 0 && s[f] < n_slots, "frame_slots[", f, "] = ", s[f],
                 " is out of range for a cache of ", n_slots, " slots");
    }
  }

  c.tables = check_tables(op, freqs_t, freqs_h, freqs_w, q, grid_h, grid_w, frame_offset, n_frames);
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
  p.norm_q_weight = c.weight_q.defined() ? c.weight_q.const_data_ptr<float>() : nullptr;
  p.norm_k_weight = c.weight_k.defined() ? c.weight_k.const_data_ptr<float>() : nullptr;
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

namespace {

at::Tensor rope3d_cpu(const at::Tensor& x, const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                      const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w, int64_t frame_offset) {
  Rope3dCall c = prepare_rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset);
  if (c.out.numel() > 0) cpu::rope3d(c.params);
  return c.out;
}

at::Tensor norm_rope_cache_write_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& norm_q_weight, const std::optional<at::Tensor>& norm_k_weight,
    double eps, const at::Tensor& freqs_t, const at::Tensor& freqs_h, const at::Tensor& freqs_w,
    int64_t grid_h, int64_t grid_w, int64_t frame_offset, at::Tensor& k_cache, at::Tensor& v_cache,
    const at::Tensor& frame_slots, bool rotate_k_temporal) {
  NormRopeCacheCall c = prepare_norm_rope_cache_write(
      q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
      frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal);
  if (c.q_out.numel() > 0) cpu::norm_rope_cache_write(c.params);
  return c.q_out;
}

std::tuple<at::Tensor, at::Tensor> ring_attention_cpu(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& slot_frame, int64_t tokens_per_frame, int64_t q_first_frame,
    int64_t chunk_frames, double scale, const std::optional<at::Tensor>& key_freqs_t,
    bool return_lse) {
  const char* op = "ring_attention";
  check_4d(op, "q", q);
  check_4d(op, "k_cache", k_cache);
  check_4d(op, "v_cache", v_cache);
  FLEX_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kHalf ||
                 q.scalar_type() == at::kBFloat16,
             "q must be float32, float16 or bfloat16, got ", q.scalar_type());
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3);
  for (const auto& [name, t] : {Named{"k_cache", &k_cache}, Named{"v_cache", &v_cache}}) {
    FLEX_CHECK(t->size(0) == B && t->size(2) == H && t->size(3) == D, name,
               " must be [B, n_slots * tokens_per_frame, H, D] with q's B, H, D (", B, ", ", H, ", ",
               D, "), got shape ", t->sizes());
    FLEX_CHECK(t->scalar_type() == q.scalar_type(), name, " dtype (", t->scalar_type(),
               ") must match q (", q.scalar_type(), ")");
    check_same_device(op, name, *t, "q", q);
    check_last_dim_contiguous(op, name, *t);
  }
  check_last_dim_contiguous(op, "q", q);
  FLEX_CHECK(v_cache.size(1) == k_cache.size(1), "v_cache shape ", v_cache.sizes(),
             " must match k_cache ", k_cache.sizes());
  FLEX_CHECK(tokens_per_frame > 0, "tokens_per_frame must be positive, got ", tokens_per_frame);
  const int64_t Tk = k_cache.size(1);
  FLEX_CHECK(Tk % tokens_per_frame == 0, "k_cache.shape[1] = ", Tk,
             " must be a multiple of tokens_per_frame = ", tokens_per_frame);
  const int64_t n_slots = Tk / tokens_per_frame;
  FLEX_CHECK(slot_frame.dim() == 1 && slot_frame.size(0) == n_slots,
             "slot_frame must be 1-D with one frame per cache slot (", n_slots, "), got shape ",
             slot_frame.sizes());
  FLEX_CHECK(slot_frame.scalar_type() == at::kLong || slot_frame.scalar_type() == at::kInt,
             "slot_frame must be int64 or int32, got ", slot_frame.scalar_type());
  check_same_device(op, "slot_frame", slot_frame, "q", q);
  const at::Tensor frames = slot_frame.to(at::kLong).contiguous();

  at::Tensor freqs;
  if (key_freqs_t.has_value() && key_freqs_t->defined()) {
    const at::Tensor& f = *key_freqs_t;
    FLEX_CHECK(f.dim() == 3 && f.size(0) == n_slots && f.size(2) == 2 && 2 * f.size(1) <= D,
               "key_freqs_t must be [n_slots, C_t, 2] = [", n_slots, ", C_t <= D/2 = ", D / 2,
               ", 2], got shape ", f.sizes());
    FLEX_CHECK(f.scalar_type() == at::kFloat, "key_freqs_t must be float32, got ", f.scalar_type());
    check_same_device(op, "key_freqs_t", f, "q", q);
    freqs = f.contiguous();
  }

  at::Tensor out = at::empty({B, Tq, H, D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor lse = return_lse ? at::empty({B, H, Tq}, q.options().dtype(at::kFloat))
                              : at::empty({0}, q.options().dtype(at::kFloat));
  if (out.numel() > 0) {
    cpu::RingAttentionArgs a;
    a.q = q;
    a.k_cache = k_cache;
    a.v_cache = v_cache;
    a.slot_frame = frames.const_data_ptr<int64_t>();
    a.tokens_per_frame = tokens_per_frame;
    a.q_first_frame = q_first_frame;
    a.chunk_frames = chunk_frames;
    a.scale = scale;
    a.key_freqs_t = freqs.defined() ? freqs.const_data_ptr<float>() : nullptr;
    a.key_planes_t = freqs.defined() ? freqs.size(1) : 0;
    a.out = out;
    a.lse = return_lse ? lse.data_ptr<float>() : nullptr;
    cpu::ring_attention(a);
  }
  return {out, lse};
}

bool built_with_cuda() {
#ifdef FLEX_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace flex

TORCH_LIBRARY(flex, m) {
  m.set_python_module("flex._extension");
  m.def(
      "rope3d(Tensor x, Tensor freqs_t, Tensor freqs_h, Tensor freqs_w, int grid_h, int grid_w, "
      "int frame_offset) -> Tensor");
  m.def(
      "norm_rope_cache_write(Tensor q, Tensor k, Tensor v, Tensor? norm_q_weight, "
      "Tensor? norm_k_weight, float eps, Tensor freqs_t, Tensor freqs_h, Tensor freqs_w, "
      "int grid_h, int grid_w, int frame_offset, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor frame_slots, bool rotate_k_temporal) -> Tensor");
  m.def(
      "ring_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slot_frame, "
      "int tokens_per_frame, int q_first_frame, int chunk_frames, float scale, "
      "Tensor? key_freqs_t, bool return_lse) -> (Tensor, Tensor)");
  m.def("built_with_cuda() -> bool", &flex::built_with_cuda);
}

TORCH_LIBRARY_IMPL(flex, CPU, m) {
  m.impl("rope3d", &flex::rope3d_cpu);
  m.impl("norm_rope_cache_write", &flex::norm_rope_cache_write_cpu);
  m.impl("ring_attention", &flex::ring_attention_cpu);
}
