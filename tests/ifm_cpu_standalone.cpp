// The IFM's CPU kernels (csrc/ifm_cpu_kernels.h) run on plain arrays, without torch,
// against a scalar reference in double: forward, and the backward's four gradients.
// Built by tests/test_cpu_compile.py for this machine and, with a cross compiler, for
// aarch64 (run under qemu-aarch64), at the vector width the build gives (16 bytes for
// a baseline x86-64 or NEON build). Prints "ok <checks>" and exits 0, or prints the
// first mismatch and exits 1.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "ifm_common.h"
#include "ifm_cpu_kernels.h"

using namespace inik;

// the vector width: the build's own, as ifm_cpu.cpp's generic entry takes it
#ifndef INIK_STANDALONE_BYTES
#if defined(__AVX512F__)
#define INIK_STANDALONE_BYTES 64
#elif defined(__AVX__)
#define INIK_STANDALONE_BYTES 32
#else
#define INIK_STANDALONE_BYTES 16
#endif
#endif

namespace {

constexpr int64_t kTile = 16;  // as ifm_host.h: the padded row and Qpad are multiples of it

struct Case {
  int64_t B, C, H, W;
  std::vector<int> support;  // odd sizes, the largest = K
};

int failures = 0, checks = 0;

void expect_close(const char* what, double got, double want, double tol) {
  ++checks;
  if (std::fabs(got - want) <= tol * (1.0 + std::fabs(want))) return;
  if (failures++ < 5) std::printf("mismatch %s: got %.9g, expected %.9g\n", what, got, want);
}

template <class T, int Bytes>
void run(const Case& cs, unsigned seed) {
  using V = typename std::conditional<sizeof(T) == 4, typename cpu::Vecs<Bytes>::f,
                                      typename cpu::Vecs<Bytes>::d>::type;
  const int64_t B = cs.B, C = cs.C, H = cs.H, W = cs.W, R = cs.support.size(), N = 3;
  int64_t K = 1;
  for (int s : cs.support) K = std::max<int64_t>(K, s);
  const int64_t h = K / 2, Qmax = K * K, Qpad = (Qmax + kTile - 1) / kTile * kTile;
  const int64_t Hp = H + 2 * h, Wp = (W + kTile - 1) / kTile * kTile + 2 * h, hw = H * W;
  std::vector<int> du(Qmax), dv(Qmax), Q(R), scatter(Qmax);
  ring_order(static_cast<int>(K), du.data(), dv.data());
  std::vector<int64_t> off(Qmax);
  for (int64_t q = 0; q < Qmax; ++q) {
    off[q] = du[q] * Wp + dv[q];
    scatter[q] = static_cast<int>(q);
  }
  for (int64_t r = 0; r < R; ++r) Q[r] = cs.support[r] * cs.support[r];

  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> U(-1.0, 1.0);
  std::vector<T> y(B * C * hw), mu(B * R * hw), om(B * N * hw), dx(B * C * hw), Aqn(R * Qmax * N, T(0));
  for (auto* v : {&y, &mu, &om, &dx})
    for (auto& e : *v) e = static_cast<T>(U(rng));
  for (int64_t r = 0; r < R; ++r)  // atoms, ring-ordered, zero outside their support
    for (int64_t q = 0; q < Q[r]; ++q)
      for (int64_t n = 0; n < N; ++n) Aqn[(r * Qmax + q) * N + n] = static_cast<T>(U(rng) / K);
  std::vector<T> ypad(B * C * Hp * Wp, T(0));
  for (int64_t p = 0; p < B * C; ++p)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) ypad[(p * Hp + i + h) * Wp + j + h] = y[(p * H + i) * W + j];

  // scalar reference, in double: k[b, p, q] and everything from it
  std::vector<double> k(B * hw * Qmax, 0.0), out(B * C * hw, 0.0), dk(B * hw * Qmax, 0.0);
  auto ypix = [&](int64_t b, int64_t c, int64_t i, int64_t j) -> double {
    return (i < 0 || i >= H || j < 0 || j >= W) ? 0.0 : double(y[((b * C + c) * H + i) * W + j]);
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < hw; ++p)
      for (int64_t q = 0; q < Qmax; ++q) {
        double s = 0;
        for (int64_t r = 0; r < R; ++r)
          if (q < Q[r])
            for (int64_t n = 0; n < N; ++n)
              s += double(mu[(b * R + r) * hw + p]) * double(om[(b * N + n) * hw + p]) * double(Aqn[(r * Qmax + q) * N + n]);
        k[(b * hw + p) * Qmax + q] = s;
        const int64_t i = p / W, j = p % W;
        for (int64_t c = 0; c < C; ++c) {
          out[(b * C + c) * hw + p] += s * ypix(b, c, i + du[q], j + dv[q]);
          dk[(b * hw + p) * Qmax + q] += double(dx[(b * C + c) * hw + p]) * ypix(b, c, i + du[q], j + dv[q]);
        }
      }
  std::vector<double> dy(B * C * hw, 0.0), dmu(B * R * hw, 0.0), dom(B * N * hw, 0.0), dA(R * N * Qmax, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < hw; ++p) {
      const int64_t i = p / W, j = p % W;
      for (int64_t q = 0; q < Qmax; ++q) {
        const int64_t ii = i + du[q], jj = j + dv[q];
        if (ii >= 0 && ii < H && jj >= 0 && jj < W)
          for (int64_t c = 0; c < C; ++c)
            dy[((b * C + c) * H + ii) * W + jj] += k[(b * hw + p) * Qmax + q] * double(dx[(b * C + c) * hw + p]);
        const double d = dk[(b * hw + p) * Qmax + q];
        for (int64_t r = 0; r < R; ++r) {
          if (q >= Q[r]) continue;
          for (int64_t n = 0; n < N; ++n) {
            const double a = Aqn[(r * Qmax + q) * N + n], m = mu[(b * R + r) * hw + p], o = om[(b * N + n) * hw + p];
            dmu[(b * R + r) * hw + p] += d * o * a;
            dom[(b * N + n) * hw + p] += d * m * a;
            dA[(r * N + n) * Qmax + q] += d * m * o;
          }
        }
      }
    }

  // the kernels
  cpu::Args<T> a{};
  a.ypad = ypad.data(); a.mu = mu.data(); a.om = om.data(); a.Aqn = Aqn.data(); a.dx = dx.data();
  a.Q = Q.data(); a.off = off.data(); a.scatter = scatter.data();
  a.B = B; a.C = C; a.H = H; a.W = W; a.R = R; a.N = N; a.Qmax = Qmax; a.Qpad = Qpad; a.Hp = Hp; a.Wp = Wp; a.h = h;
  std::vector<T> kout(B * C * hw), kdypad(B * C * Hp * Wp, T(0)), kdmu(B * R * hw), kdom(B * N * hw),
      kD(R * N * Qpad, T(0));
  a.out = kout.data(); a.dypad = kdypad.data(); a.dmu = kdmu.data(); a.dom = kdom.data();
  a.need_dy = a.need_dmu = a.need_dom = a.need_datoms = true;
  cpu::forward_rows_t<V>(a, 0, B * H);
  for (int64_t b = 0; b < B; ++b) cpu::backward_chunk_t<V>(a, b, 0, H, kD.data());

  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
  for (size_t e = 0; e < out.size(); ++e) expect_close("out", kout[e], out[e], tol);
  for (int64_t p = 0; p < B * C; ++p)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        expect_close("dimage", kdypad[(p * Hp + i + h) * Wp + j + h], dy[(p * H + i) * W + j], tol);
  for (size_t e = 0; e < dmu.size(); ++e) expect_close("dmu", kdmu[e], dmu[e], tol);
  for (size_t e = 0; e < dom.size(); ++e) expect_close("domega", kdom[e], dom[e], tol);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t q = 0; q < Q[r]; ++q)  // (taps outside a scale's support are not its gradient)
        expect_close("datoms", kD[(r * N + n) * Qpad + q], dA[(r * N + n) * Qmax + q], tol * 10);
}

}  // namespace

int main() {
  // odd widths and heights (partial tiles), one and several scales, batch 2
  const Case cases[] = {{1, 3, 9, 13, {1, 3, 5}}, {2, 2, 6, 21, {3, 7}}, {1, 1, 17, 5, {5}}, {1, 3, 4, 33, {3, 5, 7, 9}}};
  unsigned seed = 1;
  for (const Case& c : cases) {
    run<float, INIK_STANDALONE_BYTES>(c, seed++);
    run<double, INIK_STANDALONE_BYTES>(c, seed++);
  }
  if (failures) {
    std::printf("%d of %d checks failed\n", failures, checks);
    return 1;
  }
  std::printf("ok %d\n", checks);
  return 0;
}
