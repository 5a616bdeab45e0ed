// flex::built_with_cuda(): whether this build of flex._C has its CUDA kernels.
#include <torch/library.h>

namespace flex {
namespace {

bool built_with_cuda() {
#ifdef FLEX_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace flex

TORCH_LIBRARY_FRAGMENT(flex, m) {
  m.def("built_with_cuda() -> bool", &flex::built_with_cuda);
}
