// Instruction-set dispatch of the CPU attention's row kernels.
//
// cpu/attention/softmax_rows.h is compiled for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA)
// besides the baseline, and one set is chosen at run time; GCC on x86-64 only, other compilers
// get the baseline build.
#include "cpu/attention/isa.h"

#include <cstdint>
#include <cstring>

#include "flex/fast_exp.h"
#include "flex/ring_mask.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(FLEX_NO_MULTIVERSION)
#define FLEX_ROWS_MULTIVERSION 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
#define FLEX_ROWS_NS rows_v4
#include "cpu/attention/softmax_rows.h"
#undef FLEX_ROWS_NS
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define FLEX_ROWS_NS rows_v3
#include "cpu/attention/softmax_rows.h"
#undef FLEX_ROWS_NS
#pragma GCC pop_options
#else
#define FLEX_ROWS_MULTIVERSION 0
#endif
#define FLEX_ROWS_NS rows_base
#include "cpu/attention/softmax_rows.h"
#undef FLEX_ROWS_NS

namespace flex::cpu::attention {

#define FLEX_ROW_KERNELS(ns)                                                                  \
  RowKernels {                                                                                \
    &ns::row_max, &ns::exp_shift_sum, &ns::exp_scale_sum_bf16, &ns::scale_row, &ns::mask_row, \
        &ns::pack_values_vnni                                                                 \
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

}  // namespace flex::cpu::attention
