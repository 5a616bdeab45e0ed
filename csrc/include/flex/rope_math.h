// Per-element math of FLEX's 3D RoPE and RMSNorm, shared by the CPU and CUDA kernels.
//
// Everything here is framework-free and FLEX_HOST_DEVICE, so the C++ unit tests (and the CPU
// kernels) exercise exactly the code the CUDA kernels run.
//
// Layout conventions:
//  * a chunk's tokens are in (frame, row, column) order: token t of a grid_h x grid_w frame
//    grid sits at f = t / (grid_h*grid_w), h = (t / grid_w) % grid_h, w = t % grid_w;
//  * head_dim D holds D/2 interleaved rotation planes: plane p rotates (x[2p], x[2p+1]);
//  * planes [0, C_t) are temporal, [C_t, C_t + C_h) height, [C_t + C_h, D/2) width;
//  * each axis has a float32 table [rows, planes, 2] of (cos, sin), contiguous; the temporal
//    table may instead hold one row per (frame, head): [rows, heads, planes, 2] (per-head
//    frequencies, e.g. LoL's multi-head RoPE jitter).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FLEX_HOST_DEVICE __host__ __device__
#else
#define FLEX_HOST_DEVICE
#endif

namespace flex {

enum Axis : int { kTemporal = 0, kHeight = 1, kWidth = 2 };

// Position of one token inside its chunk.
struct TokenPos {
  int64_t f, h, w;
};

FLEX_HOST_DEVICE inline TokenPos token_position(int64_t t, int64_t grid_h, int64_t grid_w) {
  const int64_t per_frame = grid_h * grid_w;
  TokenPos p;
  p.f = t / per_frame;
  const int64_t r = t - p.f * per_frame;
  p.h = r / grid_w;
  p.w = r - p.h * grid_w;
  return p;
}

// The three (cos, sin) tables of 3D RoPE. table[a] points at a contiguous float32
// [rows[a], planes[a], 2] array, except that the temporal table is
// [rows, temporal_heads, planes, 2] when temporal_heads > 1 (one table per head).
struct RopeTables {
  const float* table[3];
  int32_t planes[3];
  int64_t rows[3];
  int64_t temporal_heads = 1;  // 1: one temporal table shared by every head
};

// Which axis a rotation plane belongs to, and its index inside that axis.
struct PlaneRef {
  int axis;
  int32_t index;
};

FLEX_HOST_DEVICE inline PlaneRef locate_plane(int32_t p, int32_t planes_t, int32_t planes_h) {
  PlaneRef r;
  if (p < planes_t) {
    r.axis = kTemporal;
    r.index = p;
  } else if (p < planes_t + planes_h) {
    r.axis = kHeight;
    r.index = p - planes_t;
  } else {
    r.axis = kWidth;
    r.index = p - planes_t - planes_h;
  }
  return r;
}

// Table row an axis uses for a token at (frame_row, h, w).
FLEX_HOST_DEVICE inline int64_t axis_row(int axis, int64_t frame_row, int64_t h, int64_t w) {
  return axis == kTemporal ? frame_row : (axis == kHeight ? h : w);
}

// Pointer to the (cos, sin) pairs of one axis at one row, for attention head `head` (which
// only selects a row of a per-head temporal table).
FLEX_HOST_DEVICE inline const float* axis_cos_sin(const RopeTables& tb, int axis, int64_t row, int64_t head) {
  const int64_t pairs = static_cast<int64_t>(tb.planes[axis]) * 2;
  if (axis == kTemporal && tb.temporal_heads > 1) return tb.table[axis] + (row * tb.temporal_heads + head) * pairs;
  return tb.table[axis] + row * pairs;
}

struct CosSin {
  float c, s;
};

// (cos, sin) of rotation plane p of attention head `head` for a token whose temporal row is
// frame_row. With rotate_temporal == false the temporal planes are the identity (rotate-on-load
// caches).
FLEX_HOST_DEVICE inline CosSin plane_cos_sin(const RopeTables& tb, int32_t p, int64_t head, int64_t frame_row,
                                             int64_t h, int64_t w, bool rotate_temporal) {
  const PlaneRef r = locate_plane(p, tb.planes[kTemporal], tb.planes[kHeight]);
  CosSin cs;
  if (r.axis == kTemporal && !rotate_temporal) {
    cs.c = 1.0f;
    cs.s = 0.0f;
    return cs;
  }
  const float* e = axis_cos_sin(tb, r.axis, axis_row(r.axis, frame_row, h, w), head) + 2 * r.index;
  cs.c = e[0];
  cs.s = e[1];
  return cs;
}

// Per-axis (cos, sin) rows of one head of one token: axis[a] points at planes[a] (cos, sin)
// pairs, or is nullptr where the axis is left unrotated (temporal planes of a rotate-on-load
// cache).
struct TokenCosSin {
  const float* axis[3];
};

FLEX_HOST_DEVICE inline TokenCosSin token_cos_sin(const RopeTables& tb, int64_t head, int64_t frame_row,
                                                  int64_t h, int64_t w, bool rotate_temporal) {
  TokenCosSin r;
  r.axis[kTemporal] = rotate_temporal ? axis_cos_sin(tb, kTemporal, frame_row, head) : nullptr;
  r.axis[kHeight] = axis_cos_sin(tb, kHeight, h, head);
  r.axis[kWidth] = axis_cos_sin(tb, kWidth, w, head);
  return r;
}

// Rotate one interleaved pair as the complex product (x0 + i x1) * (c + i s).
template <typename T>
FLEX_HOST_DEVICE inline void rotate_pair(T x0, T x1, T c, T s, T& y0, T& y1) {
  y0 = x0 * c - x1 * s;
  y1 = x0 * s + x1 * c;
}

// Rotate n consecutive planes: in/out hold 2n interleaved values, cs holds n (cos, sin).
// in and out may alias. T is the compute type (float or double).
template <typename T>
FLEX_HOST_DEVICE inline void rotate_planes(const T* in, T* out, const float* cs, int64_t n) {
  for (int64_t p = 0; p < n; ++p) {
    T y0, y1;
    rotate_pair<T>(in[2 * p], in[2 * p + 1], static_cast<T>(cs[2 * p]),
                   static_cast<T>(cs[2 * p + 1]), y0, y1);
    out[2 * p] = y0;
    out[2 * p + 1] = y1;
  }
}

FLEX_HOST_DEVICE inline float square_root(float x) { return sqrtf(x); }
FLEX_HOST_DEVICE inline double square_root(double x) { return sqrt(x); }

// Inverse rotation (by the conjugate (cos, -sin)) of n consecutive planes. Rotations are
// orthogonal: q . rotate(k) == rotate_inverse(q) . k, which lets attention rotate a query block
// once instead of every key of a cache slot (rotate-on-load).
template <typename T>
FLEX_HOST_DEVICE inline void rotate_planes_inverse(const T* in, T* out, const float* cs, int64_t n) {
  for (int64_t p = 0; p < n; ++p) {
    T y0, y1;
    rotate_pair<T>(in[2 * p], in[2 * p + 1], static_cast<T>(cs[2 * p]),
                   -static_cast<T>(cs[2 * p + 1]), y0, y1);
    out[2 * p] = y0;
    out[2 * p + 1] = y1;
  }
}

// RMSNorm factor 1 / sqrt(mean(x^2) + eps) from the sum of squares of n values, computed in T
// (float for float/half/bfloat16 inputs, double for double) with IEEE sqrt and division.
template <typename T>
FLEX_HOST_DEVICE inline T rms_inverse(T sum_sq, int64_t n, T eps) {
  return T(1) / square_root(sum_sq / static_cast<T>(n) + eps);
}

}  // namespace flex
