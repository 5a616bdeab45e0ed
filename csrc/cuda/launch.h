// Framework-free CUDA launchers of FLEX's kernels: raw pointers, sizes and strides in the
// parameter blocks of flex/params.h, work queued on the given stream. They return the launch
// status (cudaGetLastError) and never synchronise.
#pragma once

#include <cuda_runtime_api.h>

#include "flex/params.h"

namespace flex::cuda {

cudaError_t rope3d(const Rope3dParams& p, cudaStream_t stream);

// Cache writes of tokens whose frame_slots entry is out of [0, n_slots) are skipped (the device
// does not report it; on CPU the argument checks reject such slots).
cudaError_t norm_rope_cache_write(const NormRopeCacheParams& p, cudaStream_t stream);

}  // namespace flex::cuda
