// flex::ring_attention: its schema, argument checks and parameter packing. The kernel registers
// itself: csrc/cpu/ring_attention_kernel.cpp (CPU; GPU attention is Triton / SDPA / flash).
#include "ops/ring_attention.h"

#include <ATen/Functions.h>
#include <torch/library.h>

#include <cmath>

#include "ops/checks.h"

namespace flex {

RingAttentionCall prepare_ring_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                         const at::Tensor& v_cache, const at::Tensor& slot_frame,
                                         int64_t tokens_per_frame, int64_t q_first_frame,
                                         int64_t chunk_frames, double scale,
                                         const std::optional<at::Tensor>& key_freqs_t,
                                         bool return_lse) {
  const char* op = "ring_attention";
  const bool rotate_on_load = key_freqs_t.has_value() && key_freqs_t->defined();
  const at::Tensor none;
  check_same_device(op, "q", q,
                    {{"k_cache", &k_cache}, {"v_cache", &v_cache}, {"slot_frame", &slot_frame},
                     {"key_freqs_t", rotate_on_load ? &*key_freqs_t : &none}});
  check_4d(op, "q", q);
  check_4d(op, "k_cache", k_cache);
  check_4d(op, "v_cache", v_cache);
  FLEX_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kHalf ||
                 q.scalar_type() == at::kBFloat16,
             "q must be float32, float16 or bfloat16, got ", q.scalar_type());
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3);
  FLEX_CHECK(D > 0, "head dim D of q must be positive, got shape ", q.sizes());
  for (const NamedTensor& t : {NamedTensor{"k_cache", &k_cache}, NamedTensor{"v_cache", &v_cache}}) {
    const at::Tensor& cache = *t.tensor;
    FLEX_CHECK(cache.size(0) == B && cache.size(2) == H && cache.size(3) == D, t.name,
               " must be [B, n_slots * tokens_per_frame, H, D] with q's B, H, D (", B, ", ", H, ", ",
               D, "), got shape ", cache.sizes());
    check_same_dtype(op, t.name, cache, "q", q);
    check_last_dim_contiguous(op, t.name, cache);
  }
  check_last_dim_contiguous(op, "q", q);
  FLEX_CHECK(v_cache.size(1) == k_cache.size(1), "v_cache shape ", v_cache.sizes(),
             " must match k_cache ", k_cache.sizes());

  FLEX_CHECK(tokens_per_frame >= 1, "tokens_per_frame must be positive (>= 1), got ", tokens_per_frame);
  const int64_t Tk = k_cache.size(1);
  FLEX_CHECK(Tk % tokens_per_frame == 0, "k_cache.shape[1] = ", Tk,
             " must be a multiple of tokens_per_frame = ", tokens_per_frame);
  const int64_t n_slots = Tk / tokens_per_frame;
  FLEX_CHECK(slot_frame.dim() == 1 && slot_frame.size(0) == n_slots,
             "slot_frame must be 1-D with one frame per cache slot (", n_slots, "), got shape ",
             slot_frame.sizes());
  FLEX_CHECK(slot_frame.scalar_type() == at::kLong, "slot_frame must be int64, got ",
             slot_frame.scalar_type());

  FLEX_CHECK(q_first_frame >= 0, "q_first_frame must be >= 0, got ", q_first_frame);
  FLEX_CHECK(chunk_frames >= 0, "chunk_frames must be >= 0 (0 = no block-causal mask), got ",
             chunk_frames);
  // The last chunk of the queries ends before frame q_first_frame + query frames + chunk_frames.
  const int64_t q_frames = Tq / tokens_per_frame + 1;
  FLEX_CHECK(chunk_frames <= INT64_MAX - q_frames && q_first_frame <= INT64_MAX - q_frames - chunk_frames,
             "q_first_frame + query frames + chunk_frames = ", q_first_frame, " + ", q_frames, " + ",
             chunk_frames, " does not fit in int64");
  FLEX_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);

  RingAttentionCall c;
  c.frames = slot_frame.contiguous();
  if (rotate_on_load) {
    const at::Tensor& f = *key_freqs_t;
    // One table per slot, or one per (slot, head): [n_slots, H, C_t, 2].
    const bool per_head = f.dim() == 4 && f.size(1) == H;
    const int64_t planes_t = f.dim() >= 3 ? f.size(f.dim() - 2) : 0;
    FLEX_CHECK((f.dim() == 3 || per_head) && f.size(0) == n_slots && f.size(f.dim() - 1) == 2 &&
                   planes_t <= D / 2,
               "key_freqs_t must be [n_slots, C_t, 2] = [", n_slots, ", C_t <= D/2 = ", D / 2,
               ", 2] or one table per head [n_slots, H = ", H, ", C_t, 2], got shape ", f.sizes());
    FLEX_CHECK(f.scalar_type() == at::kFloat, "key_freqs_t must be float32, got ", f.scalar_type());
    c.key_freqs = f.contiguous();
  }

  c.out = at::empty({B, Tq, H, D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  const auto f32 = q.options().dtype(at::kFloat);
  c.lse = return_lse ? at::empty({B, H, Tq}, f32) : at::empty({0}, f32);
  RingAttentionParams& p = c.params;
  p.q = q.const_data_ptr();
  p.k_cache = k_cache.const_data_ptr();
  p.v_cache = v_cache.const_data_ptr();
  p.batch = B;
  p.q_tokens = Tq;
  p.heads = H;
  p.head_dim = D;
  p.k_tokens = Tk;
  p.q_stride = strides3(q);
  p.k_stride = strides3(k_cache);
  p.v_stride = strides3(v_cache);
  p.slot_frame = c.frames.const_data_ptr<int64_t>();
  p.tokens_per_frame = tokens_per_frame;
  p.q_first_frame = q_first_frame;
  p.chunk_frames = chunk_frames;
  p.scale = scale;
  p.key_freqs_t = rotate_on_load ? c.key_freqs.const_data_ptr<float>() : nullptr;
  p.key_planes_t = rotate_on_load ? c.key_freqs.size(-2) : 0;
  p.key_heads_t = rotate_on_load && c.key_freqs.dim() == 4 ? H : 1;
  p.out = c.out.data_ptr();
  p.lse = return_lse ? c.lse.data_ptr<float>() : nullptr;
  p.dtype = dtype_of(op, "q", q);
  return c;
}

}  // namespace flex

TORCH_LIBRARY_FRAGMENT(flex, m) {
  m.set_python_module("flex._extension");  // where the fake (meta) kernel is registered
  m.def(
      "ring_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slot_frame, "
      "int tokens_per_frame, int q_first_frame, int chunk_frames, float scale, "
      "Tensor? key_freqs_t, bool return_lse) -> (Tensor, Tensor)");
}
