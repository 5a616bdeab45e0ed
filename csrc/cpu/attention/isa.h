// The row kernels of the CPU attention's online softmax (cpu/attention/softmax_rows.h), compiled
// for several instruction sets; row_kernels() returns those of the best one this CPU has.
#pragma once

#include <cstdint>

namespace flex::cpu::attention {

struct RowKernels {
  float (*row_max)(const float*, int64_t);
  float (*exp_shift_sum)(float*, int64_t, float);
  float (*exp_scale_sum_bf16)(const float*, int64_t, float, float, uint16_t*);
  void (*scale_row)(float*, int64_t, float);
  void (*mask_row)(float*, const int64_t*, int64_t, int64_t);
  void (*pack_values_vnni)(const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*);
};

const RowKernels& row_kernels();

}  // namespace flex::cpu::attention
