// CUDA kernel of flex::norm_rope_cache_write (framework-free; torch binding in
// csrc/cuda/norm_rope_cache_write_binding.cpp).
//
// One block per token (grid-stride over tokens). Pass 1: each thread sums the squares of its
// 16-byte vectors of q and k across all heads, and a block reduction gives the RMS of the token's
// full H*D width. Pass 2 re-reads the vectors (L1/L2 hits), normalises, rotates (shared math of
// flex/rope_math.h) and writes q_out, the k cache slot and the v cache slot in the same loop.
// frame_slots is read on the device: tokens whose slot is outside [0, n_slots) get q_out but
// no cache write, so there is no host synchronisation.
#include "cuda/device_io.cuh"
#include "cuda/launch.h"
#include "flex/rope_math.h"

namespace flex::cuda {
namespace {

constexpr int kMaxThreads = 256;

// Sums a and b over the block; every thread gets the totals. `shared` holds 2 * 32 values.
template <typename acc_t>
__device__ __forceinline__ void block_sum2(acc_t& a, acc_t& b, acc_t* shared) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, off);
    b += __shfl_xor_sync(0xffffffffu, b, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n_warps = (blockDim.x + 31) / 32;
  if (lane == 0) {
    shared[warp] = a;
    shared[32 + warp] = b;
  }
  __syncthreads();
  a = lane < n_warps ? shared[lane] : acc_t(0);
  b = lane < n_warps ? shared[32 + lane] : acc_t(0);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, off);
    b += __shfl_xor_sync(0xffffffffu, b, off);
  }
}

// Normalise (inv_rms * weight, when weight != nullptr) and rotate one vector of VEC elements
// starting at element d0 of head `head`'s row.
template <typename T, int VEC>
__device__ __forceinline__ void norm_rotate(const T (&in)[VEC], T (&res)[VEC], int64_t head, int64_t d0,
                                            const typename OpMath<T>::type* weight,
                                            typename OpMath<T>::type inv_rms,
                                            const RopeTables& tables, int64_t frame_row,
                                            const TokenPos& pos, bool rotate_temporal) {
  using acc_t = typename OpMath<T>::type;
#pragma unroll
  for (int j = 0; j < VEC / 2; ++j) {
    acc_t x0 = to_opmath(in[2 * j]);
    acc_t x1 = to_opmath(in[2 * j + 1]);
    if (weight != nullptr) {
      x0 = x0 * inv_rms * weight[d0 + 2 * j];
      x1 = x1 * inv_rms * weight[d0 + 2 * j + 1];
    }
    const int32_t plane = static_cast<int32_t>(d0 / 2 + j);
    const CosSin cs = plane_cos_sin(tables, plane, head, frame_row, pos.h, pos.w, rotate_temporal);
    acc_t y0, y1;
    rotate_pair<acc_t>(x0, x1, static_cast<acc_t>(cs.c), static_cast<acc_t>(cs.s), y0, y1);
    res[2 * j] = from_opmath<T>(y0);
    res[2 * j + 1] = from_opmath<T>(y1);
  }
}

template <typename T, int VEC, bool VECTOR_IO>
__global__ void __launch_bounds__(kMaxThreads) norm_rope_cache_kernel(const NormRopeCacheParams p) {
  using acc_t = typename OpMath<T>::type;
  __shared__ acc_t shared[64];
  const auto* q = static_cast<const T*>(p.q);
  const auto* k = static_cast<const T*>(p.k);
  const auto* v = static_cast<const T*>(p.v);
  auto* q_out = static_cast<T*>(p.q_out);
  auto* k_cache = static_cast<T*>(p.k_cache);
  auto* v_cache = static_cast<T*>(p.v_cache);
  const auto* norm_q_weight = static_cast<const acc_t*>(p.norm_q_weight);
  const auto* norm_k_weight = static_cast<const acc_t*>(p.norm_k_weight);
  const int64_t tpf = p.grid_h * p.grid_w;
  const int64_t row = p.heads * p.head_dim;
  const int64_t vecs_per_head = p.head_dim / VEC;
  const int64_t n_vecs = p.heads * vecs_per_head;
  const int64_t n_tokens = p.batch * p.tokens;

  for (int64_t bt = blockIdx.x; bt < n_tokens; bt += gridDim.x) {
    const int64_t b = bt / p.tokens;
    const int64_t t = bt - b * p.tokens;
    const TokenPos pos = token_position(t, p.grid_h, p.grid_w);
    const int64_t frame_row = p.frame_offset + pos.f;
    const T* qt = q + b * p.q_stride.b + t * p.q_stride.t;
    const T* kt = k + b * p.k_stride.b + t * p.k_stride.t;
    const T* vt = v + b * p.v_stride.b + t * p.v_stride.t;

    // Pass 1: RMS over the token's full H*D width.
    acc_t inv_q = 1, inv_k = 1;
    if (p.norm_q_weight != nullptr || p.norm_k_weight != nullptr) {
      acc_t sq = 0, sk = 0;
      for (int64_t i = threadIdx.x; i < n_vecs; i += blockDim.x) {
        const int64_t h = i / vecs_per_head;
        const int64_t d0 = (i - h * vecs_per_head) * VEC;
        T in[VEC];
        if (p.norm_q_weight != nullptr) {
          load_vec<T, VEC, VECTOR_IO>(qt + h * p.q_stride.h + d0, in);
#pragma unroll
          for (int j = 0; j < VEC; ++j) sq += to_opmath(in[j]) * to_opmath(in[j]);
        }
        if (p.norm_k_weight != nullptr) {
          load_vec<T, VEC, VECTOR_IO>(kt + h * p.k_stride.h + d0, in);
#pragma unroll
          for (int j = 0; j < VEC; ++j) sk += to_opmath(in[j]) * to_opmath(in[j]);
        }
      }
      block_sum2(sq, sk, shared);
      const acc_t eps = static_cast<acc_t>(p.eps);
      if (p.norm_q_weight != nullptr) inv_q = rms_inverse<acc_t>(sq, row, eps);
      if (p.norm_k_weight != nullptr) inv_k = rms_inverse<acc_t>(sk, row, eps);
    }

    // Pass 2: normalise, rotate, store q_out and the cache slots.
    const int64_t slot = p.frame_slots[pos.f];
    const bool write_cache = slot >= 0 && slot < p.n_slots;
    const int64_t cache_token = b * p.cache_tokens + slot * tpf + (t - pos.f * tpf);
    for (int64_t i = threadIdx.x; i < n_vecs; i += blockDim.x) {
      const int64_t h = i / vecs_per_head;
      const int64_t d0 = (i - h * vecs_per_head) * VEC;
      T in[VEC], res[VEC];
      load_vec<T, VEC, VECTOR_IO>(qt + h * p.q_stride.h + d0, in);
      norm_rotate<T, VEC>(in, res, h, d0, norm_q_weight != nullptr ? norm_q_weight + h * p.head_dim : nullptr,
                          inv_q, p.tables, frame_row, pos, true);
      store_vec<T, VEC, VECTOR_IO>(q_out + bt * row + h * p.head_dim + d0, res);
      if (write_cache) {
        load_vec<T, VEC, VECTOR_IO>(kt + h * p.k_stride.h + d0, in);
        norm_rotate<T, VEC>(in, res, h, d0,
                            norm_k_weight != nullptr ? norm_k_weight + h * p.head_dim : nullptr,
                            inv_k, p.tables, frame_row, pos, p.rotate_k_temporal);
        store_vec<T, VEC, VECTOR_IO>(k_cache + cache_token * row + h * p.head_dim + d0, res);
        load_vec<T, VEC, VECTOR_IO>(vt + h * p.v_stride.h + d0, in);
        store_vec<T, VEC, VECTOR_IO>(v_cache + cache_token * row + h * p.head_dim + d0, in);
      }
    }
    __syncthreads();  // `shared` is reused by the next token
  }
}

bool strides_multiple_of(const Strides3& s, int64_t n) {
  return s.b % n == 0 && s.t % n == 0 && s.h % n == 0;
}

template <typename T>
cudaError_t launch(const NormRopeCacheParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t n_tokens = p.batch * p.tokens;
  if (n_tokens == 0 || p.heads * p.head_dim == 0) return cudaSuccess;
  const bool vector_io = p.head_dim % kVec == 0 && aligned16(p.q) && aligned16(p.k) &&
                         aligned16(p.v) && aligned16(p.q_out) && aligned16(p.k_cache) &&
                         aligned16(p.v_cache) && strides_multiple_of(p.q_stride, kVec) &&
                         strides_multiple_of(p.k_stride, kVec) && strides_multiple_of(p.v_stride, kVec);
  const int vec = vector_io ? kVec : 2;
  const int64_t n_vecs = p.heads * (p.head_dim / vec);
  const int threads = static_cast<int>(n_vecs >= kMaxThreads ? kMaxThreads : ((n_vecs + 31) / 32) * 32);
  const unsigned blocks = static_cast<unsigned>(n_tokens < (int64_t{1} << 30) ? n_tokens : (int64_t{1} << 30));
  if (vector_io) {
    norm_rope_cache_kernel<T, kVec, true><<<blocks, threads, 0, stream>>>(p);
  } else {
    norm_rope_cache_kernel<T, 2, false><<<blocks, threads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t norm_rope_cache_write(const NormRopeCacheParams& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch<decltype(tag)>(p, stream); });
}

}  // namespace flex::cuda
