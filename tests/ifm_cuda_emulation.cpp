// Runs the CUDA kernels of csrc/ifm_cuda_kernels.cuh on the CPU - one std::thread per
// CUDA thread of a block, blocks one after another, __syncthreads() a std::barrier -
// and checks every result against sums taken straight from the IFM's definition
// (docs/ARCHITECTURE.md section 2) in double precision. Lets a machine without a GPU test
// the kernels' indexing, masking, striding and reductions, not only compile them.
// Built and run by tests/test_cuda_compile.py; exits 0 when every check passes.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local Dim3 threadIdx;
Dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
#define __global__
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
namespace inik {
namespace cuda {
alignas(16) unsigned char smem_raw[1 << 20];  // the block's dynamic shared memory
}
}  // namespace inik

#include "ifm_cuda_kernels.cuh"

using inik::cuda::Geom;

template <class F> void launch(unsigned grid, unsigned block, F&& kernel_call) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned bx = 0; bx < grid; ++bx) {
    blockIdx.x = bx;
    std::barrier<> bar(block);
    g_barrier = &bar;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&kernel_call, t] {
        threadIdx.x = t;
        kernel_call();
      });
    for (auto& th : threads) th.join();
  }
}

static int failures = 0;

static void expect_close(const char* name, const char* what, const std::vector<double>& want,
                         const double* got, double tol) {
  double scale = 1.0, err = 0.0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t e = 0; e < want.size(); ++e) err = std::max(err, std::fabs(got[e] - want[e]));
  const bool ok = err <= tol * scale;
  std::printf("%-28s %-7s max error %.3g (scale %.3g) %s\n", name, what, err, scale, ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

template <class T> std::vector<double> as_double(const std::vector<T>& v) { return {v.begin(), v.end()}; }

template <class T>
void check(const char* name, int64_t B, int64_t C, int64_t H, int64_t W, int64_t R, int64_t N, int64_t K,
           std::vector<int> support, unsigned param_grid) {
  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-11;
  const int64_t h = K / 2, hw = H * W, total = B * hw;
  std::mt19937_64 gen(1234);
  std::normal_distribution<double> normal;
  auto rnd = [&](int64_t n) {
    std::vector<double> v(n);
    for (auto& x : v) x = normal(gen);
    return v;
  };
  auto Y = rnd(B * C * hw), MU = rnd(B * R * hw), OM = rnd(B * N * hw), AT = rnd(R * N * K * K),
       DX = rnd(B * C * hw);
  for (int64_t r = 0; r < R; ++r)  // atoms as the op sees them: zero outside each support
    for (int64_t n = 0; n < N; ++n)
      for (int64_t u = 0; u < K; ++u)
        for (int64_t v = 0; v < K; ++v) {
          const int64_t lo = (K - support[r]) / 2;
          if (u < lo || u >= lo + support[r] || v < lo || v >= lo + support[r])
            AT[((r * N + n) * K + u) * K + v] = 0.0;
        }
  auto y = [&](int64_t b, int64_t c, int64_t i, int64_t j) {
    return (i < 0 || i >= H || j < 0 || j >= W) ? 0.0 : Y[((b * C + c) * H + i) * W + j];
  };

  // Straight from the definition.
  std::vector<double> out(B * C * hw, 0.0), dy(B * C * hw, 0.0), dmu(B * R * hw, 0.0),
      dom(B * N * hw, 0.0), datoms(R * N * K * K, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const int64_t p = i * W + j;
        for (int64_t u = 0; u < K; ++u)
          for (int64_t v = 0; v < K; ++v) {
            double k = 0.0, dk = 0.0;
            for (int64_t r = 0; r < R; ++r)
              for (int64_t n = 0; n < N; ++n)
                k += MU[(b * R + r) * hw + p] * OM[(b * N + n) * hw + p] * AT[((r * N + n) * K + u) * K + v];
            for (int64_t c = 0; c < C; ++c) {
              const double yv = y(b, c, i + u - h, j + v - h), g = DX[(b * C + c) * hw + p];
              out[(b * C + c) * hw + p] += k * yv;
              dk += g * yv;
              const int64_t pi = i + u - h, pj = j + v - h;
              if (pi >= 0 && pi < H && pj >= 0 && pj < W) dy[((b * C + c) * H + pi) * W + pj] += k * g;
            }
            for (int64_t r = 0; r < R; ++r)
              for (int64_t n = 0; n < N; ++n) {
                const double a = AT[((r * N + n) * K + u) * K + v];
                const double m = MU[(b * R + r) * hw + p], o = OM[(b * N + n) * hw + p];
                dmu[(b * R + r) * hw + p] += o * a * dk;
                dom[(b * N + n) * hw + p] += m * a * dk;
                datoms[((r * N + n) * K + u) * K + v] += m * o * dk;
              }
          }
      }
  for (int64_t r = 0; r < R; ++r)  // the atom gradient is zero outside the support
    for (int64_t n = 0; n < N; ++n)
      for (int64_t u = 0; u < K; ++u)
        for (int64_t v = 0; v < K; ++v) {
          const int64_t lo = (K - support[r]) / 2;
          if (u < lo || u >= lo + support[r] || v < lo || v >= lo + support[r])
            datoms[((r * N + n) * K + u) * K + v] = 0.0;
        }

  // Host preparation, as csrc/ifm_host.h does it (the padded width need not be rounded).
  std::vector<int> du(K * K), dv(K * K), Q(R);
  inik::ring_order(static_cast<int>(K), du.data(), dv.data());
  int64_t Qmax = 0;
  for (int64_t r = 0; r < R; ++r) Qmax = std::max<int64_t>(Qmax, Q[r] = support[r] * support[r]);
  const int64_t Hp = H + 2 * h, Wp = W + 2 * h + 3;
  std::vector<int64_t> off(Qmax);
  for (int64_t q = 0; q < Qmax; ++q) off[q] = du[q] * Wp + dv[q];
  std::vector<T> ypad(B * C * Hp * Wp, T(0)), mu(MU.begin(), MU.end()), om(OM.begin(), OM.end()),
      dx(DX.begin(), DX.end()), Aqn(R * Qmax * N, T(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) ypad[((b * C + c) * Hp + i + h) * Wp + j + h] = T(y(b, c, i, j));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t q = 0; q < Q[r]; ++q)
      for (int64_t n = 0; n < N; ++n)
        Aqn[(r * Qmax + q) * N + n] = T(AT[((r * N + n) * K + du[q] + h) * K + dv[q] + h]);
  const Geom g{B, C, H, W, R, N, Qmax, Hp, Wp, h};
  const unsigned bd = 32, blocks = static_cast<unsigned>((total + bd - 1) / bd);

  std::vector<T> k_out(B * C * hw), k_dy(B * C * hw), k_dmu(B * R * hw), k_dom(B * N * hw);
  launch(blocks, bd, [&] {
    inik::cuda::ifm_forward_kernel<T>(ypad.data(), mu.data(), om.data(), Aqn.data(), off.data(), Q.data(),
                                      k_out.data(), g);
  });
  expect_close(name, "out", out, as_double(k_out).data(), tol);
  launch(blocks, bd, [&] {
    inik::cuda::ifm_image_grad_kernel<T>(dx.data(), mu.data(), om.data(), Aqn.data(), du.data(), dv.data(),
                                         Q.data(), k_dy.data(), g);
  });
  expect_close(name, "dimage", dy, as_double(k_dy).data(), tol);

  const int64_t n_el = R * N * Qmax;
  for (int variant = 0; variant < 2; ++variant) {  // all three outputs, then the atom gradient alone
    std::vector<T> part(param_grid * n_el, T(0)), D(n_el);
    launch(param_grid, bd, [&] {
      inik::cuda::ifm_param_grad_kernel<T>(ypad.data(), dx.data(), mu.data(), om.data(), Aqn.data(), off.data(),
                                           Q.data(), variant == 0 ? k_dmu.data() : nullptr,
                                           variant == 0 ? k_dom.data() : nullptr, part.data(), g);
    });
    launch(static_cast<unsigned>((n_el + bd - 1) / bd), bd,
           [&] { inik::cuda::ifm_sum_partials_kernel<T>(part.data(), param_grid, n_el, D.data()); });
    std::vector<double> k_datoms(R * N * K * K, 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t q = 0; q < Q[r]; ++q)
          k_datoms[((r * N + n) * K + du[q] + h) * K + dv[q] + h] = D[(r * N + n) * Qmax + q];
    expect_close(name, "datoms", datoms, k_datoms.data(), tol);
  }
  expect_close(name, "dmu", dmu, as_double(k_dmu).data(), tol);
  expect_close(name, "domega", dom, as_double(k_dom).data(), tol);
  // mu/omega gradients without the atom partials (part == nullptr: no barriers taken)
  std::fill(k_dmu.begin(), k_dmu.end(), T(0));
  launch(param_grid, bd, [&] {
    inik::cuda::ifm_param_grad_kernel<T>(ypad.data(), dx.data(), mu.data(), om.data(), Aqn.data(), off.data(),
                                         Q.data(), k_dmu.data(), nullptr, nullptr, g);
  });
  expect_close(name, "dmu*", dmu, as_double(k_dmu).data(), tol);
}

int main() {
  // name, B, C, H, W, R, N, K, support, blocks of the parameter-gradient kernel
  check<float>("fp32 support", 2, 3, 5, 7, 3, 4, 5, {5, 3, 1}, 2);
  check<double>("fp64 support", 2, 3, 5, 7, 3, 4, 5, {5, 3, 1}, 2);
  check<double>("fp64 K > H, W", 1, 1, 3, 4, 2, 3, 7, {7, 5}, 1);
  check<float>("fp32 wide, grid-stride", 1, 2, 6, 19, 2, 3, 5, {3, 5}, 3);
  std::printf(failures ? "%d checks FAILED\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}
