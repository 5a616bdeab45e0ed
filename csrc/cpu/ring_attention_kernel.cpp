// CPU kernel of flex::ring_attention: attention of a chunk's queries over a ring-buffer KV cache.
//
// Flash attention on the CPU. One task = (batch, head, up to kMaxQueryBlocksPerTask blocks of
// kQueryBlock queries). The task walks the resident part of the cache (empty slots skipped) in
// blocks of at most kKeyBlock keys; each key/value block is prepared once per task and used by
// every query block of the task: score block S = Q K^T by GEMM, scale, mask by the per-slot
// frame index (flex/ring_mask.h), online softmax (running max / sum per query), O += P V by a
// second GEMM. No full score matrix and no copy of the cache are materialised.
//
// Units (csrc/cpu/attention/): plan (block sizes, key blocks, GEMM path, tasks), isa (row
// kernels per instruction set), tiles (matrix views, copies, VNNI packing), task (the steps
// both GEMM paths share), fp32_path and brgemm_path (one task on each path).
//
// Rotate-on-load: q . R_s k == (R_s^-1 q) . k for the temporal rotation R_s of slot s, so when
// slots are large enough the key blocks are cut at slot boundaries and the task's queries are
// inverse-rotated once per slot; with small slots each loaded key is rotated instead.
// Arguments are checked by csrc/ops/ring_attention.cpp.
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>

#include "cpu/attention/brgemm.h"
#include "cpu/attention/plan.h"
#include "cpu/attention/task.h"
#include "ops/ring_attention.h"

namespace flex::cpu {
namespace {

template <typename scalar_t>
void ring_attention_kernel(const RingAttentionParams& p) {
  using namespace attention;
  const at::ScalarType dtype = c10::CppTypeToScalarType<scalar_t>::value;
  const Plan plan = make_plan(p, dtype);
  const TaskSplit split = split_tasks(p, at::get_num_threads());
  at::parallel_for(0, split.tasks, 1, [&](int64_t begin, int64_t end) {
    // The GEMMs and copies of the tasks run on scratch tensors: skip autograd dispatch.
    c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
    Scratch scratch(p.head_dim, dtype, plan.matrix_units);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / split.q_tasks;
      const int64_t q_begin = (task % split.q_tasks) * split.task_rows;
      const int64_t q_end = std::min(p.q_tokens, q_begin + split.task_rows);
      const int64_t b = bh / p.heads, h = bh % p.heads;
      if constexpr (!std::is_same_v<scalar_t, float>) {
        if (plan.matrix_units) {
          attend_brgemm<scalar_t>(p, plan, scratch, b, h, q_begin, q_end);
          continue;
        }
      }
      attend_fp32<scalar_t>(p, plan, scratch, b, h, q_begin, q_end);
    }
    if (plan.matrix_units) brgemm_release();
  });
}

std::tuple<at::Tensor, at::Tensor> ring_attention_cpu(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& slot_frame, int64_t tokens_per_frame, int64_t q_first_frame,
    int64_t chunk_frames, double scale, const std::optional<at::Tensor>& key_freqs_t,
    bool return_lse) {
  const RingAttentionCall c = prepare_ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame,
                                                     q_first_frame, chunk_frames, scale, key_freqs_t,
                                                     return_lse);
  if (c.out.numel() > 0) {
    switch (c.params.dtype) {
      case DType::kFloat32: ring_attention_kernel<float>(c.params); break;
      case DType::kFloat16: ring_attention_kernel<c10::Half>(c.params); break;
      case DType::kBFloat16: ring_attention_kernel<c10::BFloat16>(c.params); break;
      default: TORCH_CHECK(false, "ring_attention: unsupported dtype");  // rejected by the checks
    }
  }
  return {c.out, c.lse};
}

}  // namespace
}  // namespace flex::cpu

TORCH_LIBRARY_IMPL(flex, CPU, m) {
  m.impl("ring_attention", &flex::cpu::ring_attention_cpu);
}
