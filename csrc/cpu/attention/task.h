// One task of the CPU attention -- the queries [q_begin, q_end) of one (batch, head) against
// every key block of the plan -- and the steps its two GEMM paths share:
//  * attend_fp32   (fp32_path.cpp):   fp32 BLAS GEMMs (at::mm), any input dtype;
//  * attend_brgemm (brgemm_path.cpp): 16-bit brgemm with fp32 scores and accumulators.
// Both run flash attention with an online softmax (running max m, running sum l, output O).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/attention/isa.h"
#include "cpu/attention/plan.h"
#include "cpu/attention/tiles.h"
#include "flex/params.h"
#include "flex/ring_mask.h"
#include "flex/rope_math.h"

namespace flex::cpu::attention {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per-thread scratch, reused by the thread's tasks.
struct Scratch {
  static constexpr int64_t kTaskRows = kQueryBlock * kMaxQueryBlocksPerTask;
  at::Tensor q, q_rot, o;  // fp32 [kTaskRows, D]
  at::Tensor s;            // fp32 [kQueryBlock, kKeyBlock padded]
  at::Tensor k, v;         // fp32 tiles [kKeyBlock, D] (fp32 path), 16-bit staging (16-bit path)
  at::Tensor q16, k_packed, v_packed, p16;  // 16-bit path operands
  std::vector<float> m, l;
  std::vector<int64_t> chunk_end, key_frame;

  Scratch(int64_t d, at::ScalarType dtype, bool matrix_units) {
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const int64_t key_cols = round_up(kKeyBlock, kKeyPad);
    q = at::empty({kTaskRows, d}, f32);
    q_rot = at::empty({kTaskRows, d}, f32);
    o = at::empty({kTaskRows, d}, f32);
    s = at::empty({kQueryBlock * key_cols}, f32);
    k = at::empty({kKeyBlock, d}, f32);
    v = at::empty({kKeyBlock, d}, f32);
    if (matrix_units) {
      const auto h16 = at::TensorOptions().dtype(dtype);
      q16 = at::empty({kTaskRows, d}, h16);
      k_packed = at::empty({d * kKeyBlock}, h16);  // [d/2, kKeyBlock, 2]
      v_packed = at::empty({key_cols * d}, h16);   // [key_cols/2, d, 2]
      p16 = at::empty({kQueryBlock * key_cols}, h16);
    }
    m.resize(kTaskRows);
    l.resize(kTaskRows);
    chunk_end.resize(kTaskRows);
    key_frame.resize(kKeyBlock);
  }
};

// The queries of one task, cut into blocks of kQueryBlock rows, and the range of frames at which
// their chunks end (the first frame they can no longer see).
struct TaskQueries {
  int64_t b, h, begin, rows, n_blocks;
  int64_t min_end[kMaxQueryBlocksPerTask], max_end[kMaxQueryBlocksPerTask];  // per query block
  int64_t min_end_all, max_end_all;                                          // over the task
};

// Loads the task's queries into w.q (fp32, multiplied by `prescale`), their chunk ends into
// w.chunk_end, and resets the online softmax state (m = -inf, l = 0, O = 0).
template <typename scalar_t>
TaskQueries load_queries(const RingAttentionParams& p, Scratch& w, int64_t b, int64_t h, int64_t q_begin,
                         int64_t q_end, float prescale) {
  const int64_t d = p.head_dim;
  TaskQueries tq;
  tq.b = b;
  tq.h = h;
  tq.begin = q_begin;
  tq.rows = q_end - q_begin;
  tq.n_blocks = (tq.rows + kQueryBlock - 1) / kQueryBlock;
  const auto* q = static_cast<const scalar_t*>(p.q);
  float* qb = w.q.data_ptr<float>();
  copy_tile(q + b * p.q_stride.b + q_begin * p.q_stride.t + h * p.q_stride.h, p.q_stride.t, qb, d,
            tq.rows, d);
  if (prescale != 1.0f) row_kernels().scale_row(qb, tq.rows * d, prescale);
  tq.min_end_all = kNoFrameLimit;
  tq.max_end_all = std::numeric_limits<int64_t>::min();
  for (int64_t j = 0; j < tq.n_blocks; ++j) {
    tq.min_end[j] = kNoFrameLimit;
    tq.max_end[j] = std::numeric_limits<int64_t>::min();
    for (int64_t r = j * kQueryBlock; r < std::min(tq.rows, (j + 1) * kQueryBlock); ++r) {
      const int64_t e = chunk_end_frame((q_begin + r) / p.tokens_per_frame, p.q_first_frame, p.chunk_frames);
      w.chunk_end[r] = e;
      tq.min_end[j] = std::min(tq.min_end[j], e);
      tq.max_end[j] = std::max(tq.max_end[j], e);
    }
    tq.min_end_all = std::min(tq.min_end_all, tq.min_end[j]);
    tq.max_end_all = std::max(tq.max_end_all, tq.max_end[j]);
  }
  std::fill(w.m.begin(), w.m.begin() + tq.rows, kNegInf);
  std::fill(w.l.begin(), w.l.begin() + tq.rows, 0.0f);
  float* ob = w.o.data_ptr<float>();
  std::fill(ob, ob + tq.rows * d, 0.0f);
  return tq;
}

// The frame of each key of blk into w.key_frame, for masking, when some query of the task
// cannot see all of them.
inline void load_key_frames(const RingAttentionParams& p, const KeyBlock& blk, const TaskQueries& tq,
                            Scratch& w) {
  if (blk.max_frame < tq.min_end_all) return;
  for (int64_t c = 0; c < blk.cols; ++c) w.key_frame[c] = p.slot_frame[(blk.k0 + c) / p.tokens_per_frame];
}

// w.q_rot = w.q inverse-rotated by the temporal rotation of cache slot `slot` in the task's head
// (rotate-on-load applied to the queries: q . R k == R^-1 q . k).
inline void inverse_rotate_queries(const RingAttentionParams& p, Scratch& w, const TaskQueries& tq, int64_t slot) {
  const int64_t d = p.head_dim;
  const float* qb = w.q.data_ptr<float>();
  float* qr = w.q_rot.data_ptr<float>();
  const float* cs = key_cos_sin(p, slot, tq.h);
  const int64_t rotated = 2 * p.key_planes_t;
  for (int64_t r = 0; r < tq.rows; ++r) {
    rotate_planes_inverse<float>(qb + r * d, qr + r * d, cs, p.key_planes_t);
    std::copy(qb + r * d + rotated, qb + (r + 1) * d, qr + r * d + rotated);
  }
}

// Rotates `cols` fp32 key rows (row stride D) of head `head`'s cache keys from k0 on, in place,
// by the temporal rotation of their slots (rotate-on-load applied to the keys).
inline void rotate_key_rows(const RingAttentionParams& p, float* keys, int64_t head, int64_t k0, int64_t cols) {
  const int64_t d = p.head_dim;
  for (int64_t c = 0; c < cols; ++c) {
    rotate_planes<float>(keys + c * d, keys + c * d, key_cos_sin(p, (k0 + c) / p.tokens_per_frame, head),
                         p.key_planes_t);
  }
}

// Online softmax update of query row `row` after a key block whose probabilities exp(s - m_new)
// sum to `sum`: O's row is rescaled by exp(m - m_new), then l and m are updated.
inline void accumulate_row(const RowKernels& rk, Scratch& w, int64_t d, int64_t row, float m_new, float sum) {
  const float alpha = std::exp(w.m[row] - m_new);  // 0 when m was -inf
  if (alpha != 1.0f) rk.scale_row(w.o.data_ptr<float>() + row * d, d, alpha);
  w.l[row] = w.l[row] * alpha + sum;
  w.m[row] = m_new;
}

// out = O / l and lse = m + log(l) for the task's queries; queries without a visible key get 0
// and -inf.
template <typename scalar_t>
void store_output(const RingAttentionParams& p, Scratch& w, const TaskQueries& tq) {
  const int64_t d = p.head_dim;
  const RowKernels& rk = row_kernels();
  float* ob = w.o.data_ptr<float>();
  for (int64_t r = 0; r < tq.rows; ++r) {
    const float l = w.l[r];
    rk.scale_row(ob + r * d, d, l > 0.0f ? 1.0f / l : 0.0f);
    if (p.lse != nullptr) {
      p.lse[(tq.b * p.heads + tq.h) * p.q_tokens + tq.begin + r] = l > 0.0f ? w.m[r] + std::log(l) : kNegInf;
    }
  }
  auto* out = static_cast<scalar_t*>(p.out);
  copy_tile(ob, d, out + ((tq.b * p.q_tokens + tq.begin) * p.heads + tq.h) * d, p.heads * d, tq.rows, d);
}

// The two GEMM paths of one task (explicitly instantiated for the dtypes they serve: fp32 path
// float, Half, BFloat16; 16-bit path Half, BFloat16).
template <typename scalar_t>
void attend_fp32(const RingAttentionParams& p, const Plan& plan, Scratch& w, int64_t b, int64_t h,
                 int64_t q_begin, int64_t q_end);

template <typename scalar_t>
void attend_brgemm(const RingAttentionParams& p, const Plan& plan, Scratch& w, int64_t b, int64_t h,
                   int64_t q_begin, int64_t q_end);

}  // namespace flex::cpu::attention
