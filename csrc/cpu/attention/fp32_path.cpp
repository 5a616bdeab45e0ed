// The fp32 GEMM path of the CPU attention: S = Q K^T and O += P V by at::mm (BLAS) on fp32
// tiles. Queries are scaled once when loaded. fp32 caches are read in place (keys copied only
// when they are rotated on load); 16-bit caches are converted block by block into per-thread
// fp32 tiles.
#include <ATen/Functions.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "cpu/attention/task.h"

namespace flex::cpu::attention {

template <typename scalar_t>
void attend_fp32(const RingAttentionParams& p, const Plan& plan, Scratch& w, int64_t b, int64_t h,
                 int64_t q_begin, int64_t q_end) {
  constexpr bool kCast = !std::is_same_v<scalar_t, float>;
  const int64_t d = p.head_dim;
  const bool rotate_keys = p.key_freqs_t != nullptr && !plan.rotate_queries;
  const RowKernels& rk = row_kernels();
  const auto* kc = static_cast<const scalar_t*>(p.k_cache);
  const auto* vc = static_cast<const scalar_t*>(p.v_cache);
  float* sb = w.s.data_ptr<float>();
  float* kb = w.k.data_ptr<float>();
  float* vb = w.v.data_ptr<float>();

  const TaskQueries tq = load_queries<scalar_t>(p, w, b, h, q_begin, q_end, static_cast<float>(p.scale));
  int64_t rotated_slot = -1;  // slot whose inverse rotation w.q_rot holds

  for (const KeyBlock& blk : plan.blocks) {
    if (blk.min_frame >= tq.max_end_all) continue;  // no key visible to any query of the task
    const int64_t k0 = blk.k0, cols = blk.cols;
    load_key_frames(p, blk, tq, w);
    const scalar_t* k_src = kc + b * p.k_stride.b + k0 * p.k_stride.t + h * p.k_stride.h;
    const scalar_t* v_src = vc + b * p.v_stride.b + k0 * p.v_stride.t + h * p.v_stride.h;

    // Queries for this block: as loaded, or inverse-rotated by the block's slot.
    const float* q_use = w.q.data_ptr<float>();
    if (plan.rotate_queries) {
      if (blk.slot != rotated_slot) {
        inverse_rotate_queries(p, w, tq, blk.slot);
        rotated_slot = blk.slot;
      }
      q_use = w.q_rot.data_ptr<float>();
    }

    // fp32 key and value tiles of the block: the cache itself where possible.
    const float* k_tile = kb;
    int64_t k_ld = d;
    if (!kCast && !rotate_keys) {
      k_tile = reinterpret_cast<const float*>(k_src);
      k_ld = p.k_stride.t;
    } else {
      copy_tile(k_src, p.k_stride.t, kb, d, cols, d);
      if (rotate_keys) rotate_key_rows(p, kb, h, k0, cols);
    }
    const float* v_tile = vb;
    int64_t v_ld = d;
    if (!kCast) {
      v_tile = reinterpret_cast<const float*>(v_src);
      v_ld = p.v_stride.t;
    } else {
      copy_tile(v_src, p.v_stride.t, vb, d, cols, d);
    }

    for (int64_t j = 0; j < tq.n_blocks; ++j) {
      if (blk.min_frame >= tq.max_end[j]) continue;
      const bool all_visible = blk.max_frame < tq.min_end[j];
      const int64_t r0 = j * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, tq.rows - r0);

      // S = Q K^T [rows, cols] (scores already scaled: the queries are).
      at::Tensor s_mat = matrix(sb, rows, cols, cols);
      at::mm_out(s_mat, matrix(q_use + r0 * d, rows, d, d), matrix(k_tile, cols, d, k_ld).t());

      // Online softmax: mask, new running max, P = exp(S - max), rescale O.
      for (int64_t r = 0; r < rows; ++r) {
        float* s = sb + r * cols;
        const int64_t row = r0 + r;
        if (!all_visible) rk.mask_row(s, w.key_frame.data(), cols, w.chunk_end[row]);
        const float m_new = std::max(w.m[row], rk.row_max(s, cols));
        if (m_new == kNegInf) {  // nothing visible to this query yet
          std::fill(s, s + cols, 0.0f);
          continue;
        }
        accumulate_row(rk, w, d, row, m_new, rk.exp_shift_sum(s, cols, m_new));
      }

      // O += P V
      at::Tensor o_acc = matrix(w.o.data_ptr<float>() + r0 * d, rows, d, d);
      o_acc.addmm_(matrix(sb, rows, cols, cols), matrix(v_tile, cols, d, v_ld));
    }
  }
  store_output<scalar_t>(p, w, tq);
}

template void attend_fp32<float>(const RingAttentionParams&, const Plan&, Scratch&, int64_t, int64_t,
                                 int64_t, int64_t);
template void attend_fp32<c10::Half>(const RingAttentionParams&, const Plan&, Scratch&, int64_t,
                                     int64_t, int64_t, int64_t);
template void attend_fp32<c10::BFloat16>(const RingAttentionParams&, const Plan&, Scratch&, int64_t,
                                         int64_t, int64_t, int64_t);

}  // namespace flex::cpu::attention
