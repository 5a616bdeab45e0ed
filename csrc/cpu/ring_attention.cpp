// CPU attention of a chunk's queries over a ring-buffer KV cache (flex::ring_attention).
//
// Flash attention on the CPU. One task = (batch, head, up to kMaxQueryBlocksPerTask blocks of
// kQueryBlock queries). The task walks the resident part of the cache (empty slots skipped) in
// blocks of at most kKeyBlock keys; each key/value block is prepared once per task and used by
// every query block of the task: score block S = Q K^T by GEMM, scale, mask by the per-slot
// frame index (flex/ring_mask.h), online softmax (running max / sum per query), O += P V by a
// second GEMM. No full score matrix and no copy of the cache are materialised.
//
// Two GEMM paths, both accumulating in fp32:
//  * fp32: at::mm (BLAS) on fp32 tiles. fp32 caches are read in place; 16-bit caches are
//    converted block by block into per-thread fp32 tiles.
//  * 16-bit matrix units (bf16 / fp16 inputs where torch's cpublas can pack for them, e.g. AMX):
//    at::native::cpublas::brgemm on 16-bit operands with fp32 output. Keys and values are packed
//    per block into the VNNI layout; probabilities P are rounded to the input dtype for the P V
//    product (as flash attention does on GPUs), scores and accumulators stay fp32.
//
// Rotate-on-load: q . R_s k == (R_s^-1 q) . k for the temporal rotation R_s of slot s, so when
// slots are large enough the key blocks are cut at slot boundaries and the task's queries are
// inverse-rotated once per slot; with small slots each loaded key is rotated instead.
#include "cpu/ring_attention.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "flex/fast_exp.h"
#include "flex/ring_mask.h"
#include "flex/rope_math.h"

// Row kernels (cpu/softmax_rows.h) compiled for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA)
// besides the baseline, one chosen at run time; GCC on x86-64 only, other compilers get the
// baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(FLEX_NO_MULTIVERSION)
#define FLEX_ROWS_MULTIVERSION 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
#define FLEX_ROWS_NS rows_v4
#include "cpu/softmax_rows.h"
#undef FLEX_ROWS_NS
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define FLEX_ROWS_NS rows_v3
#include "cpu/softmax_rows.h"
#undef FLEX_ROWS_NS
#pragma GCC pop_options
#else
#define FLEX_ROWS_MULTIVERSION 0
#endif
#define FLEX_ROWS_NS rows_base
#include "cpu/softmax_rows.h"
#undef FLEX_ROWS_NS

// 16-bit x 16-bit -> fp32 block GEMMs of torch's cpublas (oneDNN ukernels), when this torch has them.
#if defined(CPUBLAS_BRGEMM_BF16BF16F32) && defined(CPUBLAS_BRGEMM_F16F16F32)
#define FLEX_HAVE_BRGEMM 1
#else
#define FLEX_HAVE_BRGEMM 0
#endif

namespace flex::cpu {
namespace {

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
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The row kernels of the best instruction set this CPU has.
struct RowKernels {
  float (*row_max)(const float*, int64_t);
  float (*exp_shift_sum)(float*, int64_t, float);
  float (*exp_scale_sum_bf16)(const float*, int64_t, float, float, uint16_t*);
  void (*scale_row)(float*, int64_t, float);
  void (*mask_row)(float*, const int64_t*, int64_t, int64_t);
  void (*pack_values_vnni)(const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*);
};

#define FLEX_ROW_KERNELS(ns)                                                              \
  RowKernels {                                                                            \
    &ns::row_max, &ns::exp_shift_sum, &ns::exp_scale_sum_bf16, &ns::scale_row, &ns::mask_row, \
        &ns::pack_values_vnni                                                             \
  }

const RowKernels& row_kernels() {
  static const RowKernels kernels = [] {
#if FLEX_ROWS_MULTIVERSION
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) {
      return FLEX_ROW_KERNELS(rows_v4);
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("bmi2")) {
      return FLEX_ROW_KERNELS(rows_v3);
    }
#endif
    return FLEX_ROW_KERNELS(rows_base);
  }();
  return kernels;
}

// ---- tiles -------------------------------------------------------------------------------

template <typename scalar_t>
at::Tensor matrix(const scalar_t* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<scalar_t*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
}

// dst[rows, cols] (row stride ld_dst) = src[rows, cols] (row stride ld_src), converting the
// dtype through ATen's vectorised copy kernel.
template <typename in_t, typename out_t>
void copy_tile(const in_t* src, int64_t ld_src, out_t* dst, int64_t ld_dst, int64_t rows, int64_t cols) {
  matrix(dst, rows, cols, ld_dst).copy_(matrix(src, rows, cols, ld_src));
}

// VNNI packing of 16-bit tiles (pairs of consecutive reduction-dim elements side by side).
// B operand [K, N] -> packed [K/2, ldb, 2]; both helpers move the pairs as 32-bit words.

// Keys rows [cols, d] (row stride ld) are the B operand K^T [d, cols]: packed[i/2][c][i%2] = k[c][i].
void pack_keys_vnni(const uint16_t* k, int64_t ld, int64_t cols, int64_t d, uint16_t* packed, int64_t ldb) {
  auto* out = reinterpret_cast<uint32_t*>(packed);
  constexpr int64_t kTile = 16;
  for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
    const int64_t c1 = std::min(cols, c0 + kTile);
    for (int64_t i2 = 0; i2 < d / 2; ++i2) {
      for (int64_t c = c0; c < c1; ++c) {
        uint32_t pair;
        std::memcpy(&pair, k + c * ld + 2 * i2, sizeof(pair));
        out[i2 * ldb + c] = pair;
      }
    }
  }
}

// ---- plan --------------------------------------------------------------------------------

struct Geometry {
  int64_t batch, q_tokens, heads, head_dim, k_tokens;
  int64_t qs_b, qs_t, qs_h;  // element strides (last dim contiguous)
  int64_t ks_b, ks_t, ks_h;
  int64_t vs_b, vs_t, vs_h;
};

// A block of consecutive cache keys, all in resident (frame >= 0) slots.
struct KeyBlock {
  int64_t k0, cols;
  int64_t min_frame, max_frame;  // over the block's keys
  int64_t slot;                  // the block's only slot, or -1 if it spans several
};

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

struct Plan {
  std::vector<KeyBlock> blocks;
  bool rotate_queries;  // rotate-on-load by inverse-rotating the queries per slot block
  bool matrix_units;    // 16-bit brgemm path
};

// ---- per-thread scratch ------------------------------------------------------------------

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
      k_packed = at::empty({d * kKeyBlock}, h16);    // [d/2, kKeyBlock, 2]
      v_packed = at::empty({key_cols * d}, h16);     // [key_cols/2, d, 2]
      p16 = at::empty({kQueryBlock * key_cols}, h16);
    }
    m.resize(kTaskRows);
    l.resize(kTaskRows);
    chunk_end.resize(kTaskRows);
    key_frame.resize(kKeyBlock);
  }
};

// ---- one task ----------------------------------------------------------------------------

#if FLEX_HAVE_BRGEMM
template <typename scalar_t>
void brgemm16(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, bool add_c,
              const scalar_t* a, const scalar_t* b, float* c) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    TORCH_CHECK(false, "ring_attention: internal error, no 16-bit GEMM for float");
  } else {
    at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, add_c, a, b, c, /*is_vnni=*/true);
  }
}
#endif

template <typename scalar_t>
void attend_task(const RingAttentionArgs& a, const Geometry& g, const Plan& plan, Scratch& w,
                 int64_t b, int64_t h, int64_t q_begin, int64_t q_end) {
  const int64_t d = g.head_dim;
  const int64_t tpf = a.tokens_per_frame;
  const int64_t n_rows = q_end - q_begin;
  const int64_t n_qblocks = (n_rows + kQueryBlock - 1) / kQueryBlock;
  constexpr bool kCast = !std::is_same_v<scalar_t, float>;
  const bool mu = plan.matrix_units;
  const bool rotate_keys = a.key_freqs_t != nullptr && !plan.rotate_queries;
  const float scale = static_cast<float>(a.scale);
  const RowKernels& rk = row_kernels();

  const auto* q = static_cast<const scalar_t*>(a.q.const_data_ptr());
  const auto* kc = static_cast<const scalar_t*>(a.k_cache.const_data_ptr());
  const auto* vc = static_cast<const scalar_t*>(a.v_cache.const_data_ptr());
  float* qb = w.q.data_ptr<float>();
  float* qr = w.q_rot.data_ptr<float>();
  float* ob = w.o.data_ptr<float>();
  float* sb = w.s.data_ptr<float>();
  float* kb = w.k.data_ptr<float>();
  float* vb = w.v.data_ptr<float>();

  // Queries (fp32; pre-scaled on the fp32 path, the 16-bit path scales the fp32 scores).
  copy_tile(q + b * g.qs_b + q_begin * g.qs_t + h * g.qs_h, g.qs_t, qb, d, n_rows, d);
  if (!mu) rk.scale_row(qb, n_rows * d, scale);
  int64_t min_end[kMaxQueryBlocksPerTask], max_end[kMaxQueryBlocksPerTask];
  int64_t task_min_end = kNoFrameLimit, task_max_end = std::numeric_limits<int64_t>::min();
  for (int64_t j = 0; j < n_qblocks; ++j) {
    min_end[j] = kNoFrameLimit;
    max_end[j] = std::numeric_limits<int64_t>::min();
    for (int64_t r = j * kQueryBlock; r < std::min(n_rows, (j + 1) * kQueryBlock); ++r) {
      const int64_t e = chunk_end_frame((q_begin + r) / tpf, a.q_first_frame, a.chunk_frames);
      w.chunk_end[r] = e;
      min_end[j] = std::min(min_end[j], e);
      max_end[j] = std::max(max_end[j], e);
    }
    task_min_end = std::min(task_min_end, min_end[j]);
    task_max_end = std::max(task_max_end, max_end[j]);
  }
  std::fill(w.m.begin(), w.m.begin() + n_rows, kNegInf);
  std::fill(w.l.begin(), w.l.begin() + n_rows, 0.0f);
  std::fill(ob, ob + n_rows * d, 0.0f);

  [[maybe_unused]] scalar_t* q16 = mu ? w.q16.data_ptr<scalar_t>() : nullptr;
  if (mu && !plan.rotate_queries) copy_tile(qb, d, q16, d, n_rows, d);
  int64_t rotated_slot = -1;  // slot whose inverse rotation q_rot / q16 hold

  for (const KeyBlock& blk : plan.blocks) {
    if (blk.min_frame >= task_max_end) continue;  // no key visible to any query of the task
    const int64_t k0 = blk.k0, cols = blk.cols;
    if (blk.max_frame >= task_min_end) {
      for (int64_t c = 0; c < cols; ++c) w.key_frame[c] = a.slot_frame[(k0 + c) / tpf];
    }
    const scalar_t* k_src = kc + b * g.ks_b + k0 * g.ks_t + h * g.ks_h;
    const scalar_t* v_src = vc + b * g.vs_b + k0 * g.vs_t + h * g.vs_h;

    // Queries for this block: as loaded, or inverse-rotated by the block's slot.
    const float* q_use = qb;
    if (plan.rotate_queries) {
      if (blk.slot != rotated_slot) {
        const float* cs = a.key_freqs_t + blk.slot * a.key_planes_t * 2;
        const int64_t rot = 2 * a.key_planes_t;
        for (int64_t r = 0; r < n_rows; ++r) {
          rotate_planes_inverse<float>(qb + r * d, qr + r * d, cs, a.key_planes_t);
          std::copy(qb + r * d + rot, qb + (r + 1) * d, qr + r * d + rot);
        }
        if (mu) copy_tile(qr, d, q16, d, n_rows, d);
        rotated_slot = blk.slot;
      }
      q_use = qr;
    }

    // Key and value operands of the block.
    const float* k_tile = nullptr;
    const float* v_tile = nullptr;
    int64_t k_ld = d, v_ld = d;
    const int64_t cols_pad = round_up(cols, kKeyPad);
    if (!mu) {
      if (!kCast && !rotate_keys) {
        k_tile = reinterpret_cast<const float*>(k_src);
        k_ld = g.ks_t;
      } else {
        copy_tile(k_src, g.ks_t, kb, d, cols, d);
        k_tile = kb;
      }
      if (rotate_keys) {
        for (int64_t c = 0; c < cols; ++c) {
          rotate_planes<float>(kb + c * d, kb + c * d,
                               a.key_freqs_t + ((k0 + c) / tpf) * a.key_planes_t * 2, a.key_planes_t);
        }
      }
      if (!kCast) {
        v_tile = reinterpret_cast<const float*>(v_src);
        v_ld = g.vs_t;
      } else {
        copy_tile(v_src, g.vs_t, vb, d, cols, d);
        v_tile = vb;
      }
    } else if constexpr (kCast) {
      const scalar_t* k_rows = k_src;
      int64_t k_rows_ld = g.ks_t;
      if (rotate_keys) {  // rotate in fp32, round back to 16 bits in the fp32 tile's storage
        copy_tile(k_src, g.ks_t, kb, d, cols, d);
        for (int64_t c = 0; c < cols; ++c) {
          rotate_planes<float>(kb + c * d, kb + c * d,
                               a.key_freqs_t + ((k0 + c) / tpf) * a.key_planes_t * 2, a.key_planes_t);
        }
        auto* staged = reinterpret_cast<scalar_t*>(vb);  // v's fp32 tile is free on this path
        copy_tile(kb, d, staged, d, cols, d);
        k_rows = staged;
        k_rows_ld = d;
      }
      pack_keys_vnni(reinterpret_cast<const uint16_t*>(k_rows), k_rows_ld, cols, d,
                     reinterpret_cast<uint16_t*>(w.k_packed.data_ptr<scalar_t>()), kKeyBlock);
      rk.pack_values_vnni(reinterpret_cast<const uint16_t*>(v_src), g.vs_t, cols, cols_pad, d,
                       reinterpret_cast<uint16_t*>(w.v_packed.data_ptr<scalar_t>()));
    }

    for (int64_t j = 0; j < n_qblocks; ++j) {
      if (blk.min_frame >= max_end[j]) continue;
      const bool all_visible = blk.max_frame < min_end[j];
      const int64_t r0 = j * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, n_rows - r0);
      const int64_t ld_s = mu ? cols_pad : cols;

      // S = Q K^T [rows, cols] (row stride ld_s).
      if (!mu) {
        at::Tensor s_mat = matrix(sb, rows, cols, ld_s);
        at::mm_out(s_mat, matrix(q_use + r0 * d, rows, d, d), matrix(k_tile, cols, d, k_ld).t());
      } else {
#if FLEX_HAVE_BRGEMM
        brgemm16<scalar_t>(rows, cols, d, d, kKeyBlock, ld_s, false, q16 + r0 * d,
                           w.k_packed.data_ptr<scalar_t>(), sb);
#endif
      }

      // Online softmax: mask, new running max, rescale O, P = exp(S - max). The fp32 path's
      // scores are already scaled (scaled queries); the 16-bit path scales them here.
      constexpr bool kBf16 = std::is_same_v<scalar_t, c10::BFloat16>;
      const bool fused_bf16 = mu && kBf16 && scale > 0.0f;  // exp(s * scale - max) -> bf16 P
      [[maybe_unused]] uint16_t* p16 = mu ? reinterpret_cast<uint16_t*>(w.p16.data_ptr<scalar_t>()) : nullptr;
      for (int64_t r = 0; r < rows; ++r) {
        float* s = sb + r * ld_s;
        const int64_t row = r0 + r;
        if (mu && !fused_bf16) rk.scale_row(s, cols, scale);
        if (!all_visible) rk.mask_row(s, w.key_frame.data(), cols, w.chunk_end[row]);
        const float s_max = fused_bf16 ? rk.row_max(s, cols) * scale : rk.row_max(s, cols);
        const float m_new = std::max(w.m[row], s_max);
        if (m_new == kNegInf) {  // nothing visible to this query yet
          if (fused_bf16) {
            std::fill(p16 + r * cols_pad, p16 + (r + 1) * cols_pad, uint16_t{0});
          } else {
            std::fill(s, s + ld_s, 0.0f);
          }
          continue;
        }
        const float alpha = std::exp(w.m[row] - m_new);  // 0 when m was -inf
        float sum;
        if (fused_bf16) {
          sum = rk.exp_scale_sum_bf16(s, cols, scale, m_new, p16 + r * cols_pad);
          std::fill(p16 + r * cols_pad + cols, p16 + (r + 1) * cols_pad, uint16_t{0});
        } else {
          sum = rk.exp_shift_sum(s, cols, m_new);
          if (mu) std::fill(s + cols, s + cols_pad, 0.0f);
        }
        if (alpha != 1.0f) rk.scale_row(ob + row * d, d, alpha);
        w.l[row] = w.l[row] * alpha + sum;
        w.m[row] = m_new;
      }

      // O += P V
      if (!mu) {
        at::Tensor o_acc = matrix(ob + r0 * d, rows, d, d);
        o_acc.addmm_(matrix(sb, rows, cols, ld_s), matrix(v_tile, cols, d, v_ld));
      } else if constexpr (kCast) {
#if FLEX_HAVE_BRGEMM
        scalar_t* p_op = w.p16.data_ptr<scalar_t>();
        if (!fused_bf16) copy_tile(sb, ld_s, p_op, cols_pad, rows, cols_pad);
        brgemm16<scalar_t>(rows, d, cols_pad, cols_pad, d, d, true, p_op,
                           w.v_packed.data_ptr<scalar_t>(), ob + r0 * d);
#endif
      }
    }
  }

  // out = O / l; lse = max + log(l); queries without a visible key: 0 and -inf.
  auto* out = a.out.data_ptr<scalar_t>();
  for (int64_t r = 0; r < n_rows; ++r) {
    const float l = w.l[r];
    rk.scale_row(ob + r * d, d, l > 0.0f ? 1.0f / l : 0.0f);
    if (a.lse != nullptr) {
      a.lse[(b * g.heads + h) * g.q_tokens + q_begin + r] = l > 0.0f ? w.m[r] + std::log(l) : kNegInf;
    }
  }
  copy_tile(ob, d, out + ((b * g.q_tokens + q_begin) * g.heads + h) * d, g.heads * d, n_rows, d);
}

// The 16-bit matrix-unit path is used for bf16 / fp16 when torch's cpublas packs for that dtype
// on this CPU (e.g. AMX), head_dim suits its tiles, and FLEX_CPU_ATTENTION_FP32 is not set.
bool use_matrix_units(at::ScalarType dtype, int64_t head_dim) {
#if FLEX_HAVE_BRGEMM
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  if (head_dim % kKeyPad != 0) return false;
  const char* force_fp32 = std::getenv("FLEX_CPU_ATTENTION_FP32");
  if (force_fp32 != nullptr && force_fp32[0] != '\0' && force_fp32[0] != '0') return false;
  return at::native::cpublas::could_pack(dtype);
#else
  (void)dtype;
  (void)head_dim;
  return false;
#endif
}

template <typename scalar_t>
void ring_attention_kernel(const RingAttentionArgs& a) {
  Geometry g;
  g.batch = a.q.size(0);
  g.q_tokens = a.q.size(1);
  g.heads = a.q.size(2);
  g.head_dim = a.q.size(3);
  g.k_tokens = a.k_cache.size(1);
  g.qs_b = a.q.stride(0), g.qs_t = a.q.stride(1), g.qs_h = a.q.stride(2);
  g.ks_b = a.k_cache.stride(0), g.ks_t = a.k_cache.stride(1), g.ks_h = a.k_cache.stride(2);
  g.vs_b = a.v_cache.stride(0), g.vs_t = a.v_cache.stride(1), g.vs_h = a.v_cache.stride(2);
  const int64_t n_slots = g.k_tokens / a.tokens_per_frame;

  Plan plan;
  plan.rotate_queries = a.key_freqs_t != nullptr && a.tokens_per_frame >= kMinKeysPerSlotBlock;
  plan.matrix_units = use_matrix_units(a.q.scalar_type(), g.head_dim);
  plan.blocks = plan_key_blocks(a.slot_frame, n_slots, a.tokens_per_frame, plan.rotate_queries);

  const int64_t q_blocks = (g.q_tokens + kQueryBlock - 1) / kQueryBlock;
  const int64_t blocks_per_task = std::clamp<int64_t>(
      g.batch * g.heads * q_blocks / (4 * std::max(1, at::get_num_threads())), 1, kMaxQueryBlocksPerTask);
  const int64_t task_rows = kQueryBlock * blocks_per_task;
  const int64_t q_tasks = (g.q_tokens + task_rows - 1) / task_rows;
  const int64_t tasks = g.batch * g.heads * q_tasks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    // The GEMMs and copies below run on scratch tensors: skip autograd dispatch.
    c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
    Scratch scratch(g.head_dim, a.q.scalar_type(), plan.matrix_units);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qt = task % q_tasks;
      const int64_t bh = task / q_tasks;
      const int64_t q_begin = qt * task_rows;
      attend_task<scalar_t>(a, g, plan, scratch, bh / g.heads, bh % g.heads, q_begin,
                            std::min(g.q_tokens, q_begin + task_rows));
    }
#if FLEX_HAVE_BRGEMM
    if (plan.matrix_units) at::native::cpublas::brgemm_release();
#endif
  });
}

}  // namespace

void ring_attention(const RingAttentionArgs& a) {
  switch (a.q.scalar_type()) {
    case at::kFloat: ring_attention_kernel<float>(a); break;
    case at::kHalf: ring_attention_kernel<c10::Half>(a); break;
    case at::kBFloat16: ring_attention_kernel<c10::BFloat16>(a); break;
    default: TORCH_CHECK(false, "ring_attention: unsupported dtype ", a.q.scalar_type());
  }
}

}  // namespace flex::cpu
