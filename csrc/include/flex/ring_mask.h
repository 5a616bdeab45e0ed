// Visibility rule of attention over a ring-buffer KV cache (shared by CPU and GPU code).
//
// The cache holds n_slots slots of tokens_per_frame tokens each; slot s holds latent frame
// slot_frame[s] (-1 = empty). Query token i of a call is at frame q_first_frame + i / tpf.
// Key token j (slot j / tpf) is visible to query i iff its frame is >= 0 and, when
// chunk_frames > 0, it lies before the end of the query's chunk, chunks being aligned at
// q_first_frame (block-causal order; bidirectional inside a chunk).
#pragma once

#include <cstdint>

#include "flex/rope_math.h"  // FLEX_HOST_DEVICE

namespace flex {

// A frame index no key reaches: "no block-causal limit".
constexpr int64_t kNoFrameLimit = INT64_MAX;

// First frame a query at relative frame q_rel_frame (= i / tpf) can no longer see.
FLEX_HOST_DEVICE inline int64_t chunk_end_frame(int64_t q_rel_frame, int64_t q_first_frame,
                                                int64_t chunk_frames) {
  if (chunk_frames <= 0) return kNoFrameLimit;
  return q_first_frame + (q_rel_frame / chunk_frames + 1) * chunk_frames;
}

FLEX_HOST_DEVICE inline bool key_visible(int64_t key_frame, int64_t chunk_end) {
  return key_frame >= 0 && key_frame < chunk_end;
}

}  // namespace flex
