// Planning of the CPU attention: block sizes, how the cache is walked (key blocks), which GEMM
// path runs and how the queries are split into tasks.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

#include "flex/params.h"

namespace flex::cpu::attention {

// Block sizes: a 256 x 1024 fp32 score block (1 MiB) stays in a core's L2 and amortises the
// per-GEMM overhead (measured on a 2-core AVX-512 / AMX machine: 128 x 512 blocks were ~15%
// slower). A task covers up to 8 query blocks, so that converting / packing a key block is
// amortised over them, as long as that leaves >= 4 tasks per thread.
constexpr int64_t kQueryBlock = 256;
constexpr int64_t kMaxQueryBlocksPerTask = 8;
constexpr int64_t kKeyBlock = 1024;
// The second GEMM of the 16-bit path reduces over keys: blocks are padded to this multiple.
constexpr int64_t kKeyPad = 32;
// Rotate-on-load rotates the queries once per cache slot when slots hold at least this many
// keys, and otherwise each loaded key.
constexpr int64_t kMinKeysPerSlotBlock = 32;

// A block of consecutive cache keys, all in resident (frame >= 0) slots.
struct KeyBlock {
  int64_t k0, cols;
  int64_t min_frame, max_frame;  // over the block's keys
  int64_t slot;                  // the block's only slot, or -1 if it spans several
};

struct Plan {
  std::vector<KeyBlock> blocks;
  bool rotate_queries;  // rotate-on-load by inverse-rotating the queries per slot block
  bool matrix_units;    // the 16-bit brgemm path (else the fp32 GEMM path)
};

Plan make_plan(const RingAttentionParams& p, at::ScalarType dtype);

// Tasks of (batch, head, task_rows consecutive queries).
struct TaskSplit {
  int64_t task_rows, q_tasks, tasks;
};

TaskSplit split_tasks(const RingAttentionParams& p, int num_threads);

}  // namespace flex::cpu::attention
