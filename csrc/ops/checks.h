// Argument checks shared by the flex:: ops (csrc/ops/<op>.cpp).
//
// Every failed check raises a ValueError (TORCH_CHECK_VALUE) whose message starts with the
// op's name and names the argument. The rules mirror those of python/flex/ops.py; on top of
// them the checks make any direct torch.ops.flex.* call memory-safe: sizes, offsets and
// products are checked without int64 overflow before a kernel uses them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>

#include "flex/params.h"

// ValueError in Python, message prefixed by the name of the op (a variable `op` in scope).
#define FLEX_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)

namespace flex {

struct NamedTensor {
  const char* name;
  const at::Tensor* tensor;  // an undefined tensor stands for an absent optional argument
};

// Every defined tensor of `tensors` is on ref's device. Checked first, so that no other check
// reads a tensor of another device.
void check_same_device(const char* op, const char* ref_name, const at::Tensor& ref,
                       std::initializer_list<NamedTensor> tensors);

void check_4d(const char* op, const char* name, const at::Tensor& t);

void check_last_dim_contiguous(const char* op, const char* name, const at::Tensor& t);

// The element type of a float32, float16, bfloat16 or float64 tensor.
DType dtype_of(const char* op, const char* name, const at::Tensor& t);

// t has ref's dtype.
void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                      const at::Tensor& ref);

// The memory of a (written by the op) and b does not overlap: the kernels read b while they
// write a, in parallel and in no fixed order.
void check_no_overlap(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                      const at::Tensor& b);

// Rows [first, first + count) lie inside a table of `rows` rows (first, count >= 0), computed
// without int64 overflow.
inline bool rows_fit(int64_t first, int64_t count, int64_t rows) {
  return count <= rows && first <= rows - count;
}

// a * b of two positive int64 values, or -1 when the product does not fit in int64.
inline int64_t checked_product(int64_t a, int64_t b) {
  return a > INT64_MAX / b ? -1 : a * b;
}

inline Strides3 strides3(const at::Tensor& t) {
  return Strides3{t.stride(0), t.stride(1), t.stride(2)};
}

}  // namespace flex
