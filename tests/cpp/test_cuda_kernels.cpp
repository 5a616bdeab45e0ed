// Runs the framework-free CUDA launchers (csrc/cuda/*.cu) against the shared host math on a small
// fp32 problem. Exits 77 (ctest: skipped) when no CUDA device is present.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"
#include "cuda/launch.h"
#include "flex/rope_math.h"

namespace {

constexpr int64_t B = 2, GH = 7, GW = 9, F = 3, H = 3, D = 64, TPF = GH * GW, T = F * TPF;
constexpr int32_t CT = 12, CH = 10, CW = 10;  // Wan split of D / 2 = 32 planes
constexpr int64_t OFFSET = 100003, N_SLOTS = 5;

std::vector<float> table(int64_t rows, int32_t planes, int64_t first) {
  std::vector<float> t(rows * planes * 2);
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t m = 0; m < planes; ++m) {
      const double a = double(first + r) * std::pow(10000.0, -double(m) / planes);
      t[(r * planes + m) * 2] = float(std::cos(a));
      t[(r * planes + m) * 2 + 1] = float(std::sin(a));
    }
  return t;
}

template <typename T>
T* device_alloc(size_t n) {
  void* d = nullptr;
  cudaMalloc(&d, n * sizeof(T));
  return static_cast<T*>(d);
}

template <typename T>
T* to_device(const std::vector<T>& h) {
  T* d = device_alloc<T>(h.size());
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

// Host reference of one head row: optional RMS scaling, then the 3D rotation.
void host_row(const float* in, float* out, const flex::RopeTables& tb, int64_t t, float inv_rms,
              const float* weight, bool rotate_temporal) {
  const flex::TokenPos pos = flex::token_position(t, GH, GW);
  const flex::TokenCosSin cs = flex::token_cos_sin(tb, /*head=*/0, pos.f, pos.h, pos.w, rotate_temporal);  // shared tables
  for (int64_t d = 0; d < D; ++d) out[d] = weight ? in[d] * inv_rms * weight[d] : in[d];
  int64_t first = 0;
  for (int a = 0; a < 3; ++a) {
    if (cs.axis[a]) flex::rotate_planes<float>(out + 2 * first, out + 2 * first, cs.axis[a], tb.planes[a]);
    first += tb.planes[a];
  }
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

}  // namespace

int main() {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("test_cuda_kernels: no CUDA device, skipped\n");
    return 77;
  }
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  // qkv [B, T, 3, H, D]: q, k, v are strided slices of it.
  std::vector<float> qkv(B * T * 3 * H * D);
  for (auto& v : qkv) v = normal(rng);
  std::vector<float> wq(H * D), wk(H * D);
  for (auto& v : wq) v = 1.0f + 0.1f * normal(rng);
  for (auto& v : wk) v = 1.0f + 0.1f * normal(rng);
  // Temporal table rows [0, OFFSET + F): only the used rows matter, the rest stays zero.
  std::vector<float> ft((OFFSET + F) * CT * 2, 0.0f);
  const std::vector<float> ft_used = table(F, CT, OFFSET);
  std::copy(ft_used.begin(), ft_used.end(), ft.begin() + OFFSET * CT * 2);
  const std::vector<float> fh = table(GH, CH, 0), fw = table(GW, CW, 0);
  const std::vector<int64_t> slots = {4, 0, 7};  // frame 2 -> out of range: no cache write

  float* d_qkv = to_device(qkv);
  float* d_wq = to_device(wq);
  float* d_wk = to_device(wk);
  float* d_ft = to_device(ft);
  float* d_fh = to_device(fh);
  float* d_fw = to_device(fw);
  int64_t* d_slots = to_device(slots);
  const size_t n_out = B * T * H * D, n_cache = B * N_SLOTS * TPF * H * D;
  float* d_out = device_alloc<float>(n_out);
  float* d_q_out = device_alloc<float>(n_out);
  float* d_kc = device_alloc<float>(n_cache);
  float* d_vc = device_alloc<float>(n_cache);
  cudaMemset(d_kc, 0xff, n_cache * 4);  // NaN poison
  cudaMemset(d_vc, 0xff, n_cache * 4);

  flex::RopeTables dtb{{d_ft, d_fh, d_fw}, {CT, CH, CW}, {OFFSET + F, GH, GW}};
  const flex::Strides3 s{T * 3 * H * D, 3 * H * D, D};

  // rope3d of q = qkv[:, :, 0].
  flex::Rope3dParams rp{d_qkv, d_out, B, T, H, D, s, dtb, GH, GW, OFFSET, flex::DType::kFloat32};
  CHECK(flex::cuda::rope3d(rp, nullptr) == cudaSuccess, "rope3d launch");

  flex::NormRopeCacheParams np{};
  np.q = d_qkv;
  np.k = d_qkv + H * D;
  np.v = d_qkv + 2 * H * D;
  np.batch = B, np.tokens = T, np.heads = H, np.head_dim = D;
  np.q_stride = np.k_stride = np.v_stride = s;
  np.norm_q_weight = d_wq;
  np.norm_k_weight = d_wk;
  np.eps = 1e-6;
  np.tables = dtb;
  np.grid_h = GH, np.grid_w = GW, np.frame_offset = OFFSET;
  np.q_out = d_q_out, np.k_cache = d_kc, np.v_cache = d_vc;
  np.cache_tokens = N_SLOTS * TPF;
  np.frame_slots = d_slots;
  np.n_slots = N_SLOTS;
  np.rotate_k_temporal = false;
  np.dtype = flex::DType::kFloat32;
  CHECK(flex::cuda::norm_rope_cache_write(np, nullptr) == cudaSuccess, "norm_rope_cache_write launch");
  CHECK(cudaDeviceSynchronize() == cudaSuccess, "kernels failed: %s", cudaGetErrorString(cudaGetLastError()));

  // Host expectations.
  std::vector<float> ft_host((OFFSET + F) * CT * 2, 0.0f);
  std::copy(ft_used.begin(), ft_used.end(), ft_host.begin() + OFFSET * CT * 2);
  flex::RopeTables htb{{ft_host.data(), fh.data(), fw.data()}, {CT, CH, CW}, {OFFSET + F, GH, GW}};
  std::vector<float> want_rope(n_out), want_q(n_out), want_kc(n_cache, NAN), want_vc(n_cache, NAN);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* q = &qkv[b * s.b + t * s.t];
      const float* k = q + H * D;
      const float* v = q + 2 * H * D;
      double sq = 0, sk = 0;
      for (int64_t i = 0; i < H; ++i)
        for (int64_t d = 0; d < D; ++d) {
          sq += double(q[i * D + d]) * q[i * D + d];
          sk += double(k[i * D + d]) * k[i * D + d];
        }
      const float iq = float(1.0 / std::sqrt(sq / (H * D) + 1e-6));
      const float ik = float(1.0 / std::sqrt(sk / (H * D) + 1e-6));
      const int64_t f = t / TPF, slot = slots[f];
      for (int64_t i = 0; i < H; ++i) {
        const int64_t o = ((b * T + t) * H + i) * D;
        // token_position(t_abs) puts the token at frame OFFSET + f: its temporal table row.
        const int64_t t_abs = t + OFFSET * TPF;
        host_row(q + i * D, &want_rope[o], htb, t_abs, 1.0f, nullptr, true);
        host_row(q + i * D, &want_q[o], htb, t_abs, iq, &wq[i * D], true);
        if (slot >= 0 && slot < N_SLOTS) {
          const int64_t c = ((b * N_SLOTS * TPF + slot * TPF + t % TPF) * H + i) * D;
          host_row(k + i * D, &want_kc[c], htb, t_abs, ik, &wk[i * D], false);
          for (int64_t d = 0; d < D; ++d) want_vc[c + d] = v[i * D + d];
        }
      }
    }
  const double e_rope = max_abs_diff(to_host(d_out, n_out), want_rope);
  const double e_q = max_abs_diff(to_host(d_q_out, n_out), want_q);
  CHECK(e_rope < 1e-5, "rope3d max abs error %g", e_rope);
  CHECK(e_q < 1e-5, "q_out max abs error %g", e_q);
  const std::vector<float> kc = to_host(d_kc, n_cache), vc = to_host(d_vc, n_cache);
  int64_t bad = 0;
  for (size_t i = 0; i < n_cache; ++i) {
    const bool want_nan = std::isnan(want_kc[i]);
    if (want_nan != std::isnan(kc[i]) || (!want_nan && std::fabs(kc[i] - want_kc[i]) > 1e-5)) ++bad;
    if (want_nan != std::isnan(vc[i]) || (!want_nan && vc[i] != want_vc[i])) ++bad;
  }
  CHECK(bad == 0, "%lld cache elements differ (written slots or untouched poison)", (long long)bad);
  TEST_MAIN_END("test_cuda_kernels");
}
