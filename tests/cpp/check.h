// Minimal always-on checks for the C++ unit tests (assert() vanishes under NDEBUG).
#pragma once

#include <cstdio>

namespace flex_test {
inline int& failures() {
  static int n = 0;
  return n;
}
}  // namespace flex_test

#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      ++flex_test::failures();                                                  \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                        \
      std::fprintf(stderr, "\n");                                               \
    }                                                                           \
  } while (0)

#define TEST_MAIN_END(name)                                                         \
  do {                                                                              \
    if (flex_test::failures() == 0) {                                               \
      std::printf("%s: all checks passed\n", name);                                 \
      return 0;                                                                     \
    }                                                                               \
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, flex_test::failures()); \
    return 1;                                                                       \
  } while (0)
