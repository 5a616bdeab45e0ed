// CPU kernels of FLEX's ops. Arguments are validated by the binding (csrc/ops.cpp).
#pragma once

#include "flex/params.h"

namespace flex::cpu {

void rope3d(const Rope3dParams& p);

void norm_rope_cache_write(const NormRopeCacheParams& p);

}  // namespace flex::cpu
