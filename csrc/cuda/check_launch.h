// Error check of a CUDA launcher's status, for the torch bindings of csrc/cuda/*_binding.cpp.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

namespace flex::cuda {

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace flex::cuda
