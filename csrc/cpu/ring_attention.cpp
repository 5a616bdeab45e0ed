// CPU attention of a chunk's queries over a ring-buffer KV cache (flex::ring_attention).
//
// Flash attention on the CPU: one task per (batch, head, block of kQueryBlock queries). The
// task walks the resident part of the cache (empty slots are skipped) in blocks of at most
// kKeyBlock keys; for each block it computes the fp32 score block S = (scale * Q) K^T with a
// BLAS GEMM (at::mm_out), masks it by the per-slot frame index (flex/ring_mask.h), updates a
// running max / sum per query (online softmax) and accumulates P V with a second GEMM. No full
// score matrix and no copy of the cache are materialised: fp32 caches are read in place, 16-bit
// ones are converted block by block into a per-thread fp32 tile.
//
// Rotate-on-load: q . R_s k == (R_s^-1 q) . k for the temporal rotation R_s of slot s, so when
// slots are large enough the key blocks are cut at slot boundaries and the query block is
// inverse-rotated once per slot; with small slots each loaded key is rotated instead.
#include "cpu/ring_attention.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "flex/fast_exp.h"
#include "flex/ring_mask.h"
#include "flex/rope_math.h"

// Compile the vectorisable loops for several x86 ISAs and pick one at load time (GCC/Clang on
// ELF platforms); elsewhere the portable build is used.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(FLEX_NO_TARGET_CLONES)
#define FLEX_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FLEX_CPU_CLONES
#endif

namespace flex::cpu {
namespace {

// Block sizes: a 256 x 1024 fp32 score block (1 MiB) stays in a core's L2 and amortises the
// per-GEMM overhead (measured on 2-core AVX-512: 128 x 512 blocks were ~15% slower).
constexpr int64_t kQueryBlock = 256;
constexpr int64_t kKeyBlock = 1024;
// Rotate-on-load rotates the queries once per cache slot when slots hold at least this many
// keys, and otherwise each loaded key.
constexpr int64_t kMinKeysPerSlotBlock = 32;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- vectorisable row kernels ------------------------------------------------------------

FLEX_CPU_CLONES float row_max(const float* s, int64_t n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = s[i] > m ? s[i] : m;
  return m;
}

// s[i] = exp(s[i] - shift); returns the sum.
FLEX_CPU_CLONES float exp_shift_sum(float* s, int64_t n, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_nonpositive(s[i] - shift);
    s[i] = e;
    sum += e;
  }
  return sum;
}

FLEX_CPU_CLONES void scale_row(float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// s[i] = -inf where the key's frame is not visible before chunk_end.
FLEX_CPU_CLONES void mask_row(float* s, const int64_t* key_frame, int64_t n, int64_t chunk_end) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) s[i] = key_visible(key_frame[i], chunk_end) ? s[i] : kNegInf;
}

template <typename scalar_t>
void load_row(const scalar_t* src, float* dst, int64_t n, float scale) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * scale;
}

template <typename scalar_t>
void load_row(const scalar_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// ---- the attention -----------------------------------------------------------------------

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

// Per-thread scratch, allocated once per parallel chunk.
struct Scratch {
  at::Tensor q, q_rot, s, o, k, v;  // fp32 [BQ, D] x2, [BQ * BK], [BQ, D], [BK, D], [BK, D]
  std::vector<float> m, l;
  std::vector<int64_t> chunk_end, key_frame;
  explicit Scratch(int64_t d) {
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    q = at::empty({kQueryBlock, d}, f32);
    q_rot = at::empty({kQueryBlock, d}, f32);
    s = at::empty({kQueryBlock * kKeyBlock}, f32);
    o = at::empty({kQueryBlock, d}, f32);
    k = at::empty({kKeyBlock, d}, f32);
    v = at::empty({kKeyBlock, d}, f32);
    m.resize(kQueryBlock);
    l.resize(kQueryBlock);
    chunk_end.resize(kQueryBlock);
    key_frame.resize(kKeyBlock);
  }
};

at::Tensor matrix(const float* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<float*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(at::kFloat));
}

struct Plan {
  std::vector<KeyBlock> blocks;
  bool rotate_queries;  // rotate-on-load by inverse-rotating the queries per slot block
};

template <typename scalar_t>
void attend_block(const RingAttentionArgs& a, const Geometry& g, const Plan& plan, Scratch& w,
                  int64_t b, int64_t h, int64_t q0) {
  const int64_t d = g.head_dim;
  const int64_t tpf = a.tokens_per_frame;
  const int64_t rows = std::min(kQueryBlock, g.q_tokens - q0);
  constexpr bool kCast = !std::is_same_v<scalar_t, float>;
  const bool rotate_keys = a.key_freqs_t != nullptr && !plan.rotate_queries;

  const auto* q = static_cast<const scalar_t*>(a.q.const_data_ptr());
  const auto* kc = static_cast<const scalar_t*>(a.k_cache.const_data_ptr());
  const auto* vc = static_cast<const scalar_t*>(a.v_cache.const_data_ptr());

  float* qb = w.q.data_ptr<float>();
  float* qr = w.q_rot.data_ptr<float>();
  float* ob = w.o.data_ptr<float>();
  float* sb = w.s.data_ptr<float>();
  float* kb = w.k.data_ptr<float>();
  float* vb = w.v.data_ptr<float>();

  int64_t min_end = kNoFrameLimit, max_end = std::numeric_limits<int64_t>::min();
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* src = q + b * g.qs_b + (q0 + r) * g.qs_t + h * g.qs_h;
    load_row(src, qb + r * d, d, static_cast<float>(a.scale));
    w.chunk_end[r] = chunk_end_frame((q0 + r) / tpf, a.q_first_frame, a.chunk_frames);
    min_end = std::min(min_end, w.chunk_end[r]);
    max_end = std::max(max_end, w.chunk_end[r]);
    w.m[r] = kNegInf;
    w.l[r] = 0.0f;
  }
  std::fill(ob, ob + rows * d, 0.0f);
  const at::Tensor o_mat = matrix(ob, rows, d, d);
  int64_t rotated_slot = -1;  // slot whose inverse rotation q_rot holds

  for (const KeyBlock& blk : plan.blocks) {
    if (blk.min_frame >= max_end) continue;  // no key of the block is visible to these queries
    const bool all_visible = blk.max_frame < min_end;
    const int64_t k0 = blk.k0, cols = blk.cols;
    if (!all_visible) {
      for (int64_t c = 0; c < cols; ++c) w.key_frame[c] = a.slot_frame[(k0 + c) / tpf];
    }

    // Queries of this block: as loaded, or inverse-rotated by the block's slot.
    const float* q_use = qb;
    if (plan.rotate_queries) {
      if (blk.slot != rotated_slot) {
        const float* cs = a.key_freqs_t + blk.slot * a.key_planes_t * 2;
        for (int64_t r = 0; r < rows; ++r) {
          rotate_planes_inverse<float>(qb + r * d, qr + r * d, cs, a.key_planes_t);
          std::copy(qb + r * d + 2 * a.key_planes_t, qb + (r + 1) * d, qr + r * d + 2 * a.key_planes_t);
        }
        rotated_slot = blk.slot;
      }
      q_use = qr;
    }

    // Key and value tiles: read in place, or converted (and rotated) into scratch.
    const float* k_tile = nullptr;
    int64_t k_ld = d;
    if (!kCast && !rotate_keys) {
      k_tile = reinterpret_cast<const float*>(kc + b * g.ks_b + k0 * g.ks_t + h * g.ks_h);
      k_ld = g.ks_t;
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        float* dst = kb + c * d;
        load_row(kc + b * g.ks_b + (k0 + c) * g.ks_t + h * g.ks_h, dst, d);
        if (rotate_keys) {
          rotate_planes<float>(dst, dst, a.key_freqs_t + ((k0 + c) / tpf) * a.key_planes_t * 2,
                               a.key_planes_t);
        }
      }
      k_tile = kb;
    }
    const float* v_tile = nullptr;
    int64_t v_ld = d;
    if (!kCast) {
      v_tile = reinterpret_cast<const float*>(vc + b * g.vs_b + k0 * g.vs_t + h * g.vs_h);
      v_ld = g.vs_t;
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        load_row(vc + b * g.vs_b + (k0 + c) * g.vs_t + h * g.vs_h, vb + c * d, d);
      }
      v_tile = vb;
    }

    // S = (scale Q) K^T, contiguous [rows, cols].
    at::Tensor s_mat = matrix(sb, rows, cols, cols);
    at::mm_out(s_mat, matrix(q_use, rows, d, d), matrix(k_tile, cols, d, k_ld).t());

    // Online softmax: mask, new running max, rescale the accumulator, P = exp(S - max).
    for (int64_t r = 0; r < rows; ++r) {
      float* s = sb + r * cols;
      if (!all_visible) mask_row(s, w.key_frame.data(), cols, w.chunk_end[r]);
      const float m_new = std::max(w.m[r], row_max(s, cols));
      if (m_new == kNegInf) {  // nothing visible to this query yet
        std::fill(s, s + cols, 0.0f);
        continue;
      }
      const float alpha = std::exp(w.m[r] - m_new);  // 0 when m was -inf
      const float sum = exp_shift_sum(s, cols, m_new);
      if (alpha != 1.0f) scale_row(ob + r * d, d, alpha);
      w.l[r] = w.l[r] * alpha + sum;
      w.m[r] = m_new;
    }
    // O += P V
    at::Tensor o_acc = o_mat;
    o_acc.addmm_(s_mat, matrix(v_tile, cols, d, v_ld));
  }

  // out = O / l; lse = max + log(l); queries without a visible key: 0 and -inf.
  auto* out = a.out.data_ptr<scalar_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const float l = w.l[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    scalar_t* dst = out + ((b * g.q_tokens + q0 + r) * g.heads + h) * d;
    const float* src = ob + r * d;
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<scalar_t>(src[i] * inv);
    if (a.lse != nullptr) {
      a.lse[(b * g.heads + h) * g.q_tokens + q0 + r] = l > 0.0f ? w.m[r] + std::log(l) : kNegInf;
    }
  }
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
  plan.blocks = plan_key_blocks(a.slot_frame, n_slots, a.tokens_per_frame, plan.rotate_queries);

  const int64_t q_blocks = (g.q_tokens + kQueryBlock - 1) / kQueryBlock;
  const int64_t tasks = g.batch * g.heads * q_blocks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    // The GEMMs below run on scratch tensors: skip autograd and ADInplaceOrView dispatch.
    c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
    Scratch scratch(g.head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % q_blocks;
      const int64_t bh = task / q_blocks;
      attend_block<scalar_t>(a, g, plan, scratch, bh / g.heads, bh % g.heads, qb * kQueryBlock);
    }
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
