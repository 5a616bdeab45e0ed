// Planning of the CPU attention; see plan.h.
#include "cpu/attention/plan.h"

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "cpu/attention/brgemm.h"

namespace flex::cpu::attention {
namespace {

// How the cache is walked: empty slots are skipped; runs of resident slots are cut into blocks
// of at most kKeyBlock keys of similar size. With `per_slot`, blocks never span two slots (each
// block then has a single temporal rotation, applied to the queries instead of the keys).
std::vector<KeyBlock> plan_key_blocks(const int64_t* slot_frame, int64_t n_slots, int64_t tpf,
                                      bool per_slot) {
  std::vector<KeyBlock> blocks;
  int64_t s = 0;
  while (s < n_slots) {
    if (slot_frame[s] < 0) {
      ++s;
      continue;
    }
    int64_t e = s + 1;  // run of resident slots [s, e)
    if (!per_slot) {
      while (e < n_slots && slot_frame[e] >= 0) ++e;
    }
    const int64_t k_begin = s * tpf, n_keys = (e - s) * tpf;
    const int64_t n_blocks = (n_keys + kKeyBlock - 1) / kKeyBlock;
    const int64_t size = (n_keys + n_blocks - 1) / n_blocks;
    for (int64_t k0 = k_begin; k0 < k_begin + n_keys; k0 += size) {
      KeyBlock b;
      b.k0 = k0;
      b.cols = std::min(size, k_begin + n_keys - k0);
      b.min_frame = std::numeric_limits<int64_t>::max();
      b.max_frame = std::numeric_limits<int64_t>::min();
      for (int64_t slot = k0 / tpf; slot <= (k0 + b.cols - 1) / tpf; ++slot) {
        b.min_frame = std::min(b.min_frame, slot_frame[slot]);
        b.max_frame = std::max(b.max_frame, slot_frame[slot]);
      }
      b.slot = k0 / tpf == (k0 + b.cols - 1) / tpf ? k0 / tpf : -1;
      blocks.push_back(b);
    }
    s = e;
  }
  return blocks;
}

// The 16-bit matrix-unit path is used for bf16 / fp16 when torch's cpublas packs for that dtype
// on this CPU (e.g. AMX), head_dim suits its tiles, and FLEX_CPU_ATTENTION_FP32 is not set.
bool use_matrix_units(at::ScalarType dtype, int64_t head_dim) {
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  if (head_dim % kKeyPad != 0) return false;
  const char* force_fp32 = std::getenv("FLEX_CPU_ATTENTION_FP32");
  if (force_fp32 != nullptr && force_fp32[0] != '\0' && force_fp32[0] != '0') return false;
  return brgemm_packs(dtype);
}

}  // namespace

Plan make_plan(const RingAttentionParams& p, at::ScalarType dtype) {
  Plan plan;
  plan.rotate_queries = p.key_freqs_t != nullptr && p.tokens_per_frame >= kMinKeysPerSlotBlock;
  plan.matrix_units = use_matrix_units(dtype, p.head_dim);
  plan.blocks = plan_key_blocks(p.slot_frame, p.k_tokens / p.tokens_per_frame, p.tokens_per_frame,
                                plan.rotate_queries);
  return plan;
}

TaskSplit split_tasks(const RingAttentionParams& p, int num_threads) {
  const int64_t q_blocks = (p.q_tokens + kQueryBlock - 1) / kQueryBlock;
  const int64_t blocks_per_task = std::clamp<int64_t>(
      p.batch * p.heads * q_blocks / (4 * std::max(1, num_threads)), 1, kMaxQueryBlocksPerTask);
  TaskSplit s;
  s.task_rows = kQueryBlock * blocks_per_task;
  s.q_tasks = (p.q_tokens + s.task_rows - 1) / s.task_rows;
  s.tasks = p.batch * p.heads * s.q_tasks;
  return s;
}

}  // namespace flex::cpu::attention
