// Checks shared by the two RoPE ops; see rope_tables.h.
#include "ops/rope_tables.h"

#include "ops/checks.h"

namespace flex {

RopeGrid check_rope_input(const char* op, const char* name, const at::Tensor& x, int64_t grid_h,
                          int64_t grid_w) {
  check_4d(op, name, x);
  dtype_of(op, name, x);
  const int64_t head_dim = x.size(3);
  FLEX_CHECK(head_dim > 0 && head_dim % 2 == 0, "head dim D of ", name,
             " must be even and positive, got shape ", x.sizes());
  // Plane indices are int32 in the kernels.
  FLEX_CHECK(head_dim / 2 <= INT32_MAX, "head dim D of ", name, " must have D/2 < 2^31 planes, got D = ",
             head_dim);
  check_last_dim_contiguous(op, name, x);
  FLEX_CHECK(grid_h >= 1, "grid_h must be >= 1, got ", grid_h);
  FLEX_CHECK(grid_w >= 1, "grid_w must be >= 1, got ", grid_w);
  const int64_t tpf = checked_product(grid_h, grid_w);
  FLEX_CHECK(tpf > 0, "grid_h * grid_w = ", grid_h, " * ", grid_w, " does not fit in int64");
  FLEX_CHECK(x.size(1) % tpf == 0, "T = ", name, ".shape[1] = ", x.size(1),
             " must be a multiple of grid_h * grid_w = ", tpf);
  return RopeGrid{tpf, x.size(1) / tpf};
}

CheckedTables check_tables(const char* op, const char* x_name, const at::Tensor& x,
                           const at::Tensor& freqs_t, const at::Tensor& freqs_h,
                           const at::Tensor& freqs_w, int64_t grid_h, int64_t grid_w,
                           int64_t frame_offset, int64_t n_frames) {
  const char* names[3] = {"freqs_t", "freqs_h", "freqs_w"};
  const at::Tensor* in[3] = {&freqs_t, &freqs_h, &freqs_w};
  CheckedTables r;
  at::Tensor* out[3] = {&r.t, &r.h, &r.w};
  const int64_t head_dim = x.size(3);
  int64_t planes = 0;
  // The temporal table may hold one row per (frame, head): [N, H, C_t, 2].
  const bool per_head = freqs_t.dim() == 4;
  FLEX_CHECK(!per_head || (freqs_t.size(1) == x.size(2) && freqs_t.size(3) == 2),
             "freqs_t must be [N, C, 2] or one table per head [N, H = ", x.size(2), ", C, 2], got shape ",
             freqs_t.sizes());
  for (int a = 0; a < 3; ++a) {
    const at::Tensor f = a == 0 && per_head ? freqs_t.flatten(0, 1) : *in[a];  // [N * H, C, 2]
    FLEX_CHECK(f.dim() == 3 && f.size(2) == 2, names[a], " must be [N, C, 2] (cos, sin), got shape ",
               in[a]->sizes());
    FLEX_CHECK(f.scalar_type() == at::kFloat, names[a], " must be float32, got ", f.scalar_type());
    FLEX_CHECK(f.size(1) <= head_dim / 2, names[a], " has ", f.size(1), " planes, more than D/2 = ",
               head_dim / 2, " (D = ", x_name, ".shape[3])");
    planes += f.size(1);  // three terms <= D/2 < 2^31: no overflow
  }
  const int64_t planes_t = freqs_t.size(per_head ? 2 : 1);
  FLEX_CHECK(planes * 2 == head_dim, "the plane counts of freqs_t, freqs_h, freqs_w (",
             planes_t, " + ", freqs_h.size(1), " + ", freqs_w.size(1), " = ", planes,
             ") must sum to D/2 = ", head_dim / 2, " (D = ", x_name, ".shape[3])");
  FLEX_CHECK(frame_offset >= 0, "frame_offset must be >= 0, got ", frame_offset);
  FLEX_CHECK(rows_fit(frame_offset, n_frames, freqs_t.size(0)), "frame_offset + frames = ",
             frame_offset, " + ", n_frames, " exceeds the ", freqs_t.size(0),
             " temporal rows of freqs_t (frame rows out of range)");
  FLEX_CHECK(grid_h <= freqs_h.size(0), "grid_h = ", grid_h, " exceeds the ", freqs_h.size(0),
             " rows of freqs_h");
  FLEX_CHECK(grid_w <= freqs_w.size(0), "grid_w = ", grid_w, " exceeds the ", freqs_w.size(0),
             " rows of freqs_w");
  for (int a = 0; a < 3; ++a) {
    *out[a] = in[a]->contiguous();
    r.tables.table[a] = out[a]->const_data_ptr<float>();
    r.tables.planes[a] = static_cast<int32_t>(a == 0 ? planes_t : in[a]->size(1));  // <= D/2 < 2^31
    r.tables.rows[a] = in[a]->size(0);
  }
  r.tables.temporal_heads = per_head ? freqs_t.size(1) : 1;
  return r;
}

}  // namespace flex
