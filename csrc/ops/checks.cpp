// Argument checks shared by the flex:: ops; see checks.h.
#include "ops/checks.h"

#include <ATen/MemoryOverlap.h>

namespace flex {

void check_same_device(const char* op, const char* ref_name, const at::Tensor& ref,
                       std::initializer_list<NamedTensor> tensors) {
  for (const NamedTensor& t : tensors) {
    if (!t.tensor->defined()) continue;
    FLEX_CHECK(t.tensor->device() == ref.device(), t.name, " is on ", t.tensor->device(), " but ",
               ref_name, " is on ", ref.device(), " (every tensor argument must be on ", ref_name,
               "'s device)");
  }
}

void check_4d(const char* op, const char* name, const at::Tensor& t) {
  FLEX_CHECK(t.dim() == 4, name, " must be 4-D [B, T, H, D], got shape ", t.sizes());
}

void check_last_dim_contiguous(const char* op, const char* name, const at::Tensor& t) {
  FLEX_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, "the last dim of ", name,
             " must be contiguous (stride 1), got strides ", t.strides());
}

DType dtype_of(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default:
      FLEX_CHECK(false, name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  }
  return DType::kFloat32;  // unreachable
}

void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                      const at::Tensor& ref) {
  FLEX_CHECK(t.scalar_type() == ref.scalar_type(), name, " dtype (", t.scalar_type(), ") must match ",
             ref_name, " (", ref.scalar_type(), ")");
}

void check_no_overlap(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                      const at::Tensor& b) {
  const at::MemOverlapStatus status = at::get_overlap_status(a, b);
  FLEX_CHECK(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, name_a,
             " and ", name_b, " must not share memory");
}

}  // namespace flex
