// The 16-bit path of the CPU attention (bf16 / fp16 where torch's cpublas packs for the dtype,
// e.g. AMX): S = Q K^T and O += P V by brgemm on 16-bit operands with fp32 output. Keys and
// values are packed per block into the VNNI layout; scores and accumulators stay fp32, the
// probabilities P are rounded to the input dtype for P V (as flash attention does on GPUs).
// The fp32 scores are scaled here (the queries are loaded unscaled); for bf16 with a positive
// scale, scaling, exp and the rounding of P are one fused row kernel.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "cpu/attention/brgemm.h"
#include "cpu/attention/task.h"

namespace flex::cpu::attention {

template <typename scalar_t>
void attend_brgemm(const RingAttentionParams& p, const Plan& plan, Scratch& w, int64_t b, int64_t h,
                   int64_t q_begin, int64_t q_end) {
  static_assert(!std::is_same_v<scalar_t, float>, "the 16-bit path serves Half and BFloat16");
  const int64_t d = p.head_dim;
  const bool rotate_keys = p.key_freqs_t != nullptr && !plan.rotate_queries;
  const float scale = static_cast<float>(p.scale);
  const bool fused_bf16 = std::is_same_v<scalar_t, c10::BFloat16> && scale > 0.0f;  // exp(s * scale - max) -> bf16 P
  const RowKernels& rk = row_kernels();
  const auto* kc = static_cast<const scalar_t*>(p.k_cache);
  const auto* vc = static_cast<const scalar_t*>(p.v_cache);
  float* sb = w.s.data_ptr<float>();
  float* kb = w.k.data_ptr<float>();
  scalar_t* q16 = w.q16.data_ptr<scalar_t>();
  scalar_t* k_packed = w.k_packed.data_ptr<scalar_t>();
  scalar_t* v_packed = w.v_packed.data_ptr<scalar_t>();
  scalar_t* p16 = w.p16.data_ptr<scalar_t>();
  auto* p16_bits = reinterpret_cast<uint16_t*>(p16);

  const TaskQueries tq = load_queries<scalar_t>(p, w, b, h, q_begin, q_end, 1.0f);
  if (!plan.rotate_queries) copy_tile(w.q.data_ptr<float>(), d, q16, d, tq.rows, d);
  int64_t rotated_slot = -1;  // slot whose inverse rotation q16 holds

  for (const KeyBlock& blk : plan.blocks) {
    if (blk.min_frame >= tq.max_end_all) continue;  // no key visible to any query of the task
    const int64_t k0 = blk.k0, cols = blk.cols;
    const int64_t cols_pad = round_up(cols, kKeyPad);
    load_key_frames(p, blk, tq, w);
    const scalar_t* k_src = kc + b * p.k_stride.b + k0 * p.k_stride.t + h * p.k_stride.h;
    const scalar_t* v_src = vc + b * p.v_stride.b + k0 * p.v_stride.t + h * p.v_stride.h;

    // 16-bit queries for this block: as loaded, or inverse-rotated by the block's slot.
    if (plan.rotate_queries && blk.slot != rotated_slot) {
      inverse_rotate_queries(p, w, tq, blk.slot);
      copy_tile(w.q_rot.data_ptr<float>(), d, q16, d, tq.rows, d);
      rotated_slot = blk.slot;
    }

    // VNNI-packed keys (rotated in fp32 and rounded back to 16 bits when rotated on load) and values.
    const scalar_t* k_rows = k_src;
    int64_t k_rows_ld = p.k_stride.t;
    if (rotate_keys) {
      copy_tile(k_src, p.k_stride.t, kb, d, cols, d);
      rotate_key_rows(p, kb, h, k0, cols);
      auto* staged = reinterpret_cast<scalar_t*>(w.v.data_ptr<float>());  // v's fp32 tile is free here
      copy_tile(kb, d, staged, d, cols, d);
      k_rows = staged;
      k_rows_ld = d;
    }
    pack_keys_vnni(reinterpret_cast<const uint16_t*>(k_rows), k_rows_ld, cols, d,
                   reinterpret_cast<uint16_t*>(k_packed), kKeyBlock);
    rk.pack_values_vnni(reinterpret_cast<const uint16_t*>(v_src), p.v_stride.t, cols, cols_pad, d,
                        reinterpret_cast<uint16_t*>(v_packed));

    for (int64_t j = 0; j < tq.n_blocks; ++j) {
      if (blk.min_frame >= tq.max_end[j]) continue;
      const bool all_visible = blk.max_frame < tq.min_end[j];
      const int64_t r0 = j * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, tq.rows - r0);

      // S = Q K^T [rows, cols] (row stride cols_pad), unscaled.
      brgemm16<scalar_t>(rows, cols, d, d, kKeyBlock, cols_pad, false, q16 + r0 * d, k_packed, sb);

      // Online softmax: scale, mask, new running max, P = exp(S - max) (zero-padded to cols_pad),
      // rescale O.
      for (int64_t r = 0; r < rows; ++r) {
        float* s = sb + r * cols_pad;
        uint16_t* p_row = p16_bits + r * cols_pad;
        const int64_t row = r0 + r;
        if (!fused_bf16) rk.scale_row(s, cols, scale);
        if (!all_visible) rk.mask_row(s, w.key_frame.data(), cols, w.chunk_end[row]);
        const float s_max = fused_bf16 ? rk.row_max(s, cols) * scale : rk.row_max(s, cols);
        const float m_new = std::max(w.m[row], s_max);
        if (m_new == kNegInf) {  // nothing visible to this query yet
          if (fused_bf16) {
            std::fill(p_row, p_row + cols_pad, uint16_t{0});
          } else {
            std::fill(s, s + cols_pad, 0.0f);
          }
          continue;
        }
        float sum;
        if (fused_bf16) {
          sum = rk.exp_scale_sum_bf16(s, cols, scale, m_new, p_row);
          std::fill(p_row + cols, p_row + cols_pad, uint16_t{0});
        } else {
          sum = rk.exp_shift_sum(s, cols, m_new);
          std::fill(s + cols, s + cols_pad, 0.0f);
        }
        accumulate_row(rk, w, d, row, m_new, sum);
      }

      // O += P V (P rounded to 16 bits unless the fused kernel wrote it so)
      if (!fused_bf16) copy_tile(sb, cols_pad, p16, cols_pad, rows, cols_pad);
      brgemm16<scalar_t>(rows, d, cols_pad, cols_pad, d, d, true, p16, v_packed,
                         w.o.data_ptr<float>() + r0 * d);
    }
  }
  store_output<scalar_t>(p, w, tq);
}

template void attend_brgemm<c10::Half>(const RingAttentionParams&, const Plan&, Scratch&, int64_t,
                                       int64_t, int64_t, int64_t);
template void attend_brgemm<c10::BFloat16>(const RingAttentionParams&, const Plan&, Scratch&, int64_t,
                                           int64_t, int64_t, int64_t);

}  // namespace flex::cpu::attention
