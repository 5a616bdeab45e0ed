// torch's 16-bit x 16-bit -> fp32 block GEMMs (cpublas brgemm, oneDNN ukernels), where this
// torch has them. Without them, have_brgemm() is false and the wrappers are never called.
#pragma once

#include <ATen/native/CPUBlas.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>

#if defined(CPUBLAS_BRGEMM_BF16BF16F32) && defined(CPUBLAS_BRGEMM_F16F16F32)
#define FLEX_HAVE_BRGEMM 1
#else
#define FLEX_HAVE_BRGEMM 0
#endif

namespace flex::cpu::attention {

// Whether cpublas packs dtype (bf16 / fp16) for the matrix units of this CPU (e.g. AMX).
inline bool brgemm_packs(at::ScalarType dtype) {
#if FLEX_HAVE_BRGEMM
  return at::native::cpublas::could_pack(dtype);
#else
  (void)dtype;
  return false;
#endif
}

// c[m, n] (+)= a[m, k] b[k, n], b VNNI-packed; 16-bit operands, fp32 c.
template <typename scalar_t>
void brgemm16(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, bool add_c,
              const scalar_t* a, const scalar_t* b, float* c) {
#if FLEX_HAVE_BRGEMM
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, add_c, a, b, c, /*is_vnni=*/true);
#else
  TORCH_CHECK(false, "ring_attention: internal error, this torch has no 16-bit brgemm");
#endif
}

// Releases the thread's brgemm state (after its last brgemm16 call).
inline void brgemm_release() {
#if FLEX_HAVE_BRGEMM
  at::native::cpublas::brgemm_release();
#endif
}

}  // namespace flex::cpu::attention
