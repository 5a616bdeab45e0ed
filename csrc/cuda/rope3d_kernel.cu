// CUDA kernel of flex::rope3d (framework-free; the torch binding is csrc/cuda/rope3d_binding.cpp).
//
// Grid-stride loop over vectors of VEC consecutive elements of one head row (16-byte loads and
// stores when the tensors allow it, else element-wise pairs). Each pair is rotated with the
// shared math of flex/rope_math.h, in float (double for double inputs), rounded once on store.
#include "cuda/device_io.cuh"
#include "cuda/launch.h"
#include "flex/rope_math.h"

namespace flex::cuda {
namespace {

template <typename T, int VEC, bool VECTOR_IO>
__global__ void rope3d_kernel(const Rope3dParams p, int64_t n_vecs) {
  using acc_t = typename OpMath<T>::type;
  const auto* x = static_cast<const T*>(p.x);
  auto* out = static_cast<T*>(p.out);
  const int64_t vecs_per_row = p.head_dim / VEC;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_vecs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t dv = i % vecs_per_row;
    int64_t rest = i / vecs_per_row;
    const int64_t h = rest % p.heads;
    rest /= p.heads;
    const int64_t t = rest % p.tokens;
    const int64_t b = rest / p.tokens;
    const TokenPos pos = token_position(t, p.grid_h, p.grid_w);

    T in[VEC];
    load_vec<T, VEC, VECTOR_IO>(x + b * p.x_stride.b + t * p.x_stride.t + h * p.x_stride.h + dv * VEC, in);
    T res[VEC];
#pragma unroll
    for (int j = 0; j < VEC / 2; ++j) {
      const int32_t plane = static_cast<int32_t>(dv * (VEC / 2) + j);
      const CosSin cs = plane_cos_sin(p.tables, plane, h, p.frame_offset + pos.f, pos.h, pos.w, true);
      acc_t y0, y1;
      rotate_pair<acc_t>(to_opmath(in[2 * j]), to_opmath(in[2 * j + 1]), static_cast<acc_t>(cs.c),
                         static_cast<acc_t>(cs.s), y0, y1);
      res[2 * j] = from_opmath<T>(y0);
      res[2 * j + 1] = from_opmath<T>(y1);
    }
    store_vec<T, VEC, VECTOR_IO>(out + ((b * p.tokens + t) * p.heads + h) * p.head_dim + dv * VEC, res);
  }
}

template <typename T>
cudaError_t launch(const Rope3dParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kThreads = 256;
  const int64_t rows = p.batch * p.tokens * p.heads;
  if (rows == 0 || p.head_dim == 0) return cudaSuccess;
  const bool vector_io = p.head_dim % kVec == 0 && aligned16(p.x) && aligned16(p.out) &&
                         p.x_stride.b % kVec == 0 && p.x_stride.t % kVec == 0 &&
                         p.x_stride.h % kVec == 0;
  if (vector_io) {
    const int64_t n = rows * (p.head_dim / kVec);
    rope3d_kernel<T, kVec, true><<<grid_size(n, kThreads), kThreads, 0, stream>>>(p, n);
  } else {
    const int64_t n = rows * (p.head_dim / 2);
    rope3d_kernel<T, 2, false><<<grid_size(n, kThreads), kThreads, 0, stream>>>(p, n);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t rope3d(const Rope3dParams& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch<decltype(tag)>(p, stream); });
}

}  // namespace flex::cuda
