// Element conversion and vector IO helpers of the CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flex/params.h"

namespace flex::cuda {

// Compute type: float for 16/32-bit inputs, double for double.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

__device__ __forceinline__ float to_opmath(float x) { return x; }
__device__ __forceinline__ double to_opmath(double x) { return x; }
__device__ __forceinline__ float to_opmath(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_opmath(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_opmath(typename OpMath<T>::type x);
template <>
__device__ __forceinline__ float from_opmath<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_opmath<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_opmath<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_opmath<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// VEC consecutive elements. With VECTOR_IO the access is a single aligned VEC * sizeof(T)-byte
// transaction (the launcher checked the alignment); otherwise element by element.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC, bool VECTOR_IO>
__device__ __forceinline__ void load_vec(const T* src, T (&dst)[VEC]) {
  if constexpr (VECTOR_IO) {
    const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(src);
#pragma unroll
    for (int j = 0; j < VEC; ++j) dst[j] = pk.v[j];
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dst[j] = src[j];
  }
}

template <typename T, int VEC, bool VECTOR_IO>
__device__ __forceinline__ void store_vec(T* dst, const T (&src)[VEC]) {
  if constexpr (VECTOR_IO) {
    Pack<T, VEC> pk;
#pragma unroll
    for (int j = 0; j < VEC; ++j) pk.v[j] = src[j];
    *reinterpret_cast<Pack<T, VEC>*>(dst) = pk;
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dst[j] = src[j];
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace flex::cuda

namespace flex::cuda {

// Calls fn(T{}) with the CUDA element type of dtype.
template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
    case DType::kFloat64: return fn(double{});
  }
  return cudaErrorInvalidValue;
}

// Blocks for a grid-stride loop over n items.
inline unsigned grid_size(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < (int64_t{1} << 20) ? (blocks > 0 ? blocks : 1) : (int64_t{1} << 20));
}

}  // namespace flex::cuda
