// Unit tests of the shared per-element math (csrc/include/flex/*.h) against direct
// double-precision formulas. Torch-free; built and run by CMake / ctest.
#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "flex/fast_exp.h"
#include "flex/ring_mask.h"
#include "flex/rope_math.h"

namespace {

constexpr double kPi = 3.14159265358979323846;

// A (cos, sin) table [rows, planes, 2] of position * theta_m, theta_m = base^(-m / planes),
// angles in double, stored as float (as the host side of FLEX builds them).
std::vector<float> make_table(int64_t rows, int32_t planes, int64_t first_row = 0) {
  std::vector<float> t(static_cast<size_t>(rows * planes * 2));
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t m = 0; m < planes; ++m) {
      const double angle = static_cast<double>(first_row + r) * std::pow(10000.0, -double(m) / planes);
      t[(r * planes + m) * 2] = static_cast<float>(std::cos(angle));
      t[(r * planes + m) * 2 + 1] = static_cast<float>(std::sin(angle));
    }
  }
  return t;
}

void test_token_position() {
  const int64_t gh = 7, gw = 9;
  for (int64_t t = 0; t < 5 * gh * gw; ++t) {
    const flex::TokenPos p = flex::token_position(t, gh, gw);
    CHECK(p.f == t / (gh * gw) && p.h == (t / gw) % gh && p.w == t % gw, "t=%lld", (long long)t);
    CHECK((p.f * gh + p.h) * gw + p.w == t, "round trip t=%lld", (long long)t);
  }
}

void test_locate_plane() {
  // Wan head_dim 128: 22 temporal, 21 height, 21 width planes.
  for (int32_t p = 0; p < 64; ++p) {
    const flex::PlaneRef r = flex::locate_plane(p, 22, 21);
    const int axis = p < 22 ? 0 : (p < 43 ? 1 : 2);
    const int32_t index = p - (axis == 0 ? 0 : (axis == 1 ? 22 : 43));
    CHECK(r.axis == axis && r.index == index, "p=%d -> axis %d index %d", p, r.axis, r.index);
  }
}

// Full 3D rotation of one head row through the header helpers vs a direct complex product in
// double with angles recomputed from scratch.
void test_rotation_of_a_token() {
  const int32_t ct = 22, ch = 21, cw = 21, d = 2 * (ct + ch + cw);
  const int64_t gh = 7, gw = 9, frame_offset = 1000000, n_frames = 3;
  const std::vector<float> ft = make_table(n_frames, ct, frame_offset);  // rows offset by 10^6
  const std::vector<float> fh = make_table(gh, ch);
  const std::vector<float> fw = make_table(gw, cw);
  flex::RopeTables tb{{ft.data(), fh.data(), fw.data()}, {ct, ch, cw}, {n_frames, gh, gw}};

  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  double max_err = 0.0;
  for (int64_t t = 0; t < n_frames * gh * gw; t += 5) {
    const flex::TokenPos pos = flex::token_position(t, gh, gw);
    for (int rotate_temporal = 0; rotate_temporal < 2; ++rotate_temporal) {
      std::vector<float> x(d), y_row(d), y_pair(d);
      for (auto& v : x) v = normal(rng);
      // Row path (CPU kernels): token_cos_sin + rotate_planes per axis.
      const flex::TokenCosSin cs = flex::token_cos_sin(tb, 0, pos.f, pos.h, pos.w, rotate_temporal != 0);
      y_row = x;
      int64_t first = 0;
      for (int a = 0; a < 3; ++a) {
        if (cs.axis[a] != nullptr) {
          flex::rotate_planes<float>(y_row.data() + 2 * first, y_row.data() + 2 * first, cs.axis[a],
                                     tb.planes[a]);
        }
        first += tb.planes[a];
      }
      // Pair path (CUDA kernels): plane_cos_sin + rotate_pair per plane.
      for (int32_t p = 0; p < d / 2; ++p) {
        const flex::CosSin c = flex::plane_cos_sin(tb, p, 0, pos.f, pos.h, pos.w, rotate_temporal != 0);
        flex::rotate_pair<float>(x[2 * p], x[2 * p + 1], c.c, c.s, y_pair[2 * p], y_pair[2 * p + 1]);
      }
      // Direct formula in double.
      for (int32_t p = 0; p < d / 2; ++p) {
        double pos_axis, theta;
        if (p < ct) {
          pos_axis = rotate_temporal ? double(frame_offset + pos.f) : 0.0;
          theta = std::pow(10000.0, -double(p) / ct);
        } else if (p < ct + ch) {
          pos_axis = double(pos.h);
          theta = std::pow(10000.0, -double(p - ct) / ch);
        } else {
          pos_axis = double(pos.w);
          theta = std::pow(10000.0, -double(p - ct - ch) / cw);
        }
        const std::complex<double> z =
            std::complex<double>(x[2 * p], x[2 * p + 1]) * std::polar(1.0, pos_axis * theta);
        for (int k = 0; k < 2; ++k) {
          const double ref = k == 0 ? z.real() : z.imag();
          max_err = std::fmax(max_err, std::fabs(y_row[2 * p + k] - ref));
          CHECK(y_row[2 * p + k] == y_pair[2 * p + k], "row and pair paths differ at t=%lld p=%d",
                (long long)t, p);
        }
      }
    }
  }
  // |x| ~ 4 at most; fp32 tables + fp32 math: a few 1e-7.
  CHECK(max_err < 4e-6, "max abs error %g of the 3D rotation", max_err);
}

// A per-head temporal table [rows, heads, planes, 2]: head h of frame row r reads its own
// (cos, sin) row, in both the row and the pair helpers; the spatial tables stay shared.
void test_per_head_temporal_table() {
  const int32_t ct = 3, ch = 2, cw = 2;
  const int64_t heads = 4, rows = 5;
  std::vector<float> ft(static_cast<size_t>(rows * heads * ct * 2));
  for (size_t i = 0; i < ft.size(); ++i) ft[i] = static_cast<float>(i);  // each entry its own value
  const std::vector<float> fh = make_table(3, ch), fw = make_table(3, cw);
  flex::RopeTables tb{{ft.data(), fh.data(), fw.data()}, {ct, ch, cw}, {rows, 3, 3}, heads};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* want = ft.data() + (r * heads + h) * ct * 2;
      const flex::TokenCosSin cs = flex::token_cos_sin(tb, h, r, 1, 2, true);
      CHECK(cs.axis[0] == want, "row helper: frame %lld head %lld", (long long)r, (long long)h);
      CHECK(cs.axis[1] == fh.data() + 1 * ch * 2 && cs.axis[2] == fw.data() + 2 * cw * 2,
            "spatial rows must not depend on the head");
      for (int32_t p = 0; p < ct; ++p) {
        const flex::CosSin c = flex::plane_cos_sin(tb, p, h, r, 1, 2, true);
        CHECK(c.c == want[2 * p] && c.s == want[2 * p + 1], "pair helper: frame %lld head %lld plane %d",
              (long long)r, (long long)h, p);
      }
    }
  }
}

void test_rotate_pair_double() {
  double max_err = 0;
  for (int i = 0; i < 1000; ++i) {
    const double a = 2 * kPi * i / 1000.0, x0 = std::cos(3.0 * i), x1 = std::sin(7.0 * i);
    double y0, y1;
    flex::rotate_pair<double>(x0, x1, std::cos(a), std::sin(a), y0, y1);
    const std::complex<double> z = std::complex<double>(x0, x1) * std::polar(1.0, a);
    max_err = std::fmax(max_err, std::fmax(std::fabs(y0 - z.real()), std::fabs(y1 - z.imag())));
  }
  CHECK(max_err < 1e-15, "rotate_pair<double> error %g", max_err);
}

// q . rotate(k) == rotate_inverse(q) . k, the identity rotate-on-load attention relies on.
void test_inverse_rotation() {
  const int32_t n = 22;
  const std::vector<float> cs = make_table(1, n, 123457);
  std::mt19937 rng(3);
  std::normal_distribution<double> normal;
  std::vector<double> q(2 * n), k(2 * n), k_rot(2 * n), q_inv(2 * n), back(2 * n);
  for (int i = 0; i < 2 * n; ++i) {
    q[i] = normal(rng);
    k[i] = normal(rng);
  }
  flex::rotate_planes<double>(k.data(), k_rot.data(), cs.data(), n);
  flex::rotate_planes_inverse<double>(q.data(), q_inv.data(), cs.data(), n);
  flex::rotate_planes_inverse<double>(k_rot.data(), back.data(), cs.data(), n);
  double lhs = 0, rhs = 0, round_trip = 0;
  for (int i = 0; i < 2 * n; ++i) {
    lhs += q[i] * k_rot[i];
    rhs += q_inv[i] * k[i];
    round_trip = std::fmax(round_trip, std::fabs(back[i] - k[i]));
  }
  // The float32 table is unit-norm only to ~1e-7, hence the tolerances.
  CHECK(std::fabs(lhs - rhs) < 1e-12 * (1 + std::fabs(lhs)), "q.Rk = %.17g, R^-1 q.k = %.17g", lhs, rhs);
  CHECK(round_trip < 1e-6, "inverse(rotate(k)) differs from k by %g", round_trip);
}

void test_rms_inverse() {
  std::mt19937 rng(2);
  std::normal_distribution<double> normal;
  for (int n : {1, 7, 1536}) {
    double sum_sq = 0;
    for (int i = 0; i < n; ++i) {
      const double v = normal(rng);
      sum_sq += v * v;
    }
    const double ref = 1.0 / std::sqrt(sum_sq / n + 1e-6);
    const double got_d = flex::rms_inverse<double>(sum_sq, n, 1e-6);
    const float got_f = flex::rms_inverse<float>(static_cast<float>(sum_sq), n, 1e-6f);
    CHECK(std::fabs(got_d - ref) <= 1e-15 * ref, "double n=%d: %.17g vs %.17g", n, got_d, ref);
    CHECK(std::fabs(got_f - ref) <= 3e-7 * ref, "float n=%d: %.9g vs %.17g", n, got_f, ref);
  }
}

void test_ring_mask() {
  // Direct statement of the rule for every (query frame, key frame) pair.
  for (int64_t q_first : {0, 5, 100003}) {
    for (int64_t chunk : {-1, 0, 1, 3}) {
      for (int64_t q_rel = 0; q_rel < 7; ++q_rel) {
        const int64_t end = flex::chunk_end_frame(q_rel, q_first, chunk);
        for (int64_t key = -1; key < q_first + 12; ++key) {
          bool want = key >= 0;
          if (chunk > 0) want = want && key < q_first + (q_rel / chunk + 1) * chunk;
          CHECK(flex::key_visible(key, end) == want, "q_first=%lld chunk=%lld q_rel=%lld key=%lld",
                (long long)q_first, (long long)chunk, (long long)q_rel, (long long)key);
        }
      }
    }
  }
  CHECK(!flex::key_visible(-1, flex::kNoFrameLimit), "empty slot visible");
}

void test_exp_nonpositive() {
  double max_rel = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f * static_cast<float>(i) / 200000.0f;
    const double ref = std::exp(static_cast<double>(x));
    const double rel = std::fabs(flex::exp_nonpositive(x) - ref) / ref;
    max_rel = std::fmax(max_rel, rel);
  }
  CHECK(max_rel < 2e-7, "exp_nonpositive max relative error %g", max_rel);
  CHECK(flex::exp_nonpositive(0.0f) == 1.0f, "exp(0) = %.9g", flex::exp_nonpositive(0.0f));
  CHECK(flex::exp_nonpositive(-87.5f) == 0.0f, "exp(-87.5) should flush to 0");
  CHECK(flex::exp_nonpositive(-std::numeric_limits<float>::infinity()) == 0.0f, "exp(-inf)");
  CHECK(std::isnan(flex::exp_nonpositive(std::numeric_limits<float>::quiet_NaN())), "exp(nan)");
}

}  // namespace

int main() {
  test_token_position();
  test_locate_plane();
  test_rotation_of_a_token();
  test_per_head_temporal_table();
  test_rotate_pair_double();
  test_inverse_rotation();
  test_rms_inverse();
  test_ring_mask();
  test_exp_nonpositive();
  TEST_MAIN_END("test_rope_math");
}
