// CPU kernels of the IFM and the registration of the native ops
//   inik::ifm_native_forward(image, mu, omega, atoms, support) -> out
//   inik::ifm_native_backward(grad, image, mu, omega, atoms, support, needs) -> 4 grads
// (docs/ARCHITECTURE.md section 2). The CUDA kernels register for the same schemas in ifm_cuda.cu.
//
// Layout of the work: a tile is L neighbouring pixels of one row (one vector's lanes:
// 16 floats on AVX-512), and every per-pixel quantity is an L-lane vector (GCC/Clang
// vector extensions), so
// synthesising the per-pixel kernel k = sum_{r,n} mu*omega*atoms[r,n] - the
// dominant cost, N * sum_r s_r^2 multiply-adds per pixel - and applying it to all
// C channels vectorise across pixels with the tap loops left scalar. The tile's
// kernel (Qmax x 16 values, 14 KB for K=15 fp32) stays in L1.
//
// Backward is deterministic and atomic-free:
// * image gradient: each tile adds k * grad into a padded image-gradient buffer
//   (a scatter, exact transpose of the forward gather). Rows are split into chunks
//   of >= 2h rows; even chunks run in parallel first, then odd chunks, so no two
//   threads ever write one row and every element's sum has a fixed order;
// * atom gradient: chunks are grouped into at most kMaxAtomPartials fixed groups
//   (independent of the thread count), each accumulating its own partial sum;
//   the partials are added in group order at the end.
// All offsets are 64-bit.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_isa.h"
#include "cpu_simd.h"
#include "ifm_host.h"

namespace inik {
namespace cpu {

// Vectors of the instruction set's native width (GCC splits wider ones through the
// stack): 512 bits on AVX-512, 256 on AVX2, 128 in the generic build. A tile is one
// vector's lanes of pixels, L = 16, 8 or 4 floats (8, 4 or 2 doubles); the host pads
// Qpad and the image rows to multiples of kTile = 16, so of every L.
template <int Bytes> struct Vecs {
  typedef float f __attribute__((vector_size(Bytes)));
  typedef double d __attribute__((vector_size(Bytes)));
};
template <class V, class T> constexpr int64_t lanes() { return sizeof(V) / sizeof(T); }

template <class V, class T> INIK_AI V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T> INIK_AI void storeu(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }

template <class V, class T> INIK_AI V load_tile(const T* p, int64_t valid) {
  if (valid >= lanes<V, T>()) return loadu<V>(p);
  T tmp[lanes<V, T>()] = {};
  for (int64_t jj = 0; jj < valid; ++jj) tmp[jj] = p[jj];
  return loadu<V>(tmp);
}
template <class V, class T> INIK_AI void store_tile(T* p, const V& v, int64_t valid) {
  if (valid >= lanes<V, T>()) return storeu(p, v);
  T tmp[lanes<V, T>()];
  storeu(tmp, v);
  for (int64_t jj = 0; jj < valid; ++jj) p[jj] = tmp[jj];
}

template <class T> struct Args {
  const T* ypad;  // (B, C, Hp, Wp) zero-padded image
  const T* mu;  // (B, R, H, W)
  const T* om;  // (B, N, H, W)
  const T* Aqn;  // (R, Qmax, N) ring-ordered atoms, n fastest
  const T* dx;  // (B, C, H, W) output gradient (backward)
  T* out;  // (B, C, H, W) forward output
  T* dypad;  // (B, C, Hp, Wp) image gradient, padded
  T* dmu;  // (B, R, H, W)
  T* dom;  // (B, N, H, W)
  T* dpart;  // (P, R, N, Qpad) atom-gradient partials
  const int* Q;  // (R) s_r^2
  const int64_t* off;  // (Qmax) tap offsets in the padded plane
  const int* scatter;  // (Qmax) tap order for the image-gradient scatter
  int64_t B, C, H, W, R, N, Qmax, Qpad, Hp, Wp, h;
  bool need_dy, need_dmu, need_dom, need_datoms;
};

// Scratch of one worker: vectors for mu, omega, grad tiles, kernel, dk, dcoef.
// One block, aligned by hand (std::vector does not promise a vector type's alignment).
template <class V, class T> struct Scratch {
  std::vector<unsigned char> raw;
  V *m, *o, *g, *cc, *kb, *dk, *dc, *domacc;
  T *cs, *dkT;
  explicit Scratch(const Args<T>& a) {
    // in vectors: m, o, g, cc, kb, dk, dc, domacc, then cs (N x L) and dkT (L x Qpad)
    const int64_t nv = a.R + a.N + a.C + a.N + 2 * a.Qmax + 2 * a.N + a.N + a.Qpad;
    raw.assign((nv + 1) * sizeof(V), 0);
    const auto addr = reinterpret_cast<std::uintptr_t>(raw.data());
    V* p = reinterpret_cast<V*>((addr + sizeof(V) - 1) / sizeof(V) * sizeof(V));
    m = p; p += a.R;
    o = p; p += a.N;
    g = p; p += a.C;
    cc = p; p += a.N;
    kb = p; p += a.Qmax;
    dk = p; p += a.Qmax;
    dc = p; p += a.N;
    domacc = p; p += a.N;
    cs = reinterpret_cast<T*>(p);
    p += a.N;
    dkT = reinterpret_cast<T*>(p);
  }
};

template <class V, class T>
INIK_AI void load_coeffs(const Args<T>& a, Scratch<V, T>& s, int64_t b, int64_t pix, int64_t valid) {
  const int64_t hw = a.H * a.W;
  for (int64_t r = 0; r < a.R; ++r) s.m[r] = load_tile<V>(a.mu + (b * a.R + r) * hw + pix, valid);
  for (int64_t n = 0; n < a.N; ++n) s.o[n] = load_tile<V>(a.om + (b * a.N + n) * hw + pix, valid);
}

// kb[q] = sum_{r : q < Q_r} sum_n mu_r * omega_n * A[r, q, n]   for q < Qmax.
// Eight taps at a time: eight independent FMA chains hide the FMA latency and
// each coefficient vector loaded is used eight times.
template <class V, class T> INIK_AI void synthesise(const Args<T>& a, Scratch<V, T>& s) {
  V* kb = s.kb;
  V* cc = s.cc;
  const int64_t N = a.N;
  for (int64_t q = 0; q < a.Qmax; ++q) kb[q] = V{};
  for (int64_t r = 0; r < a.R; ++r) {
    for (int64_t n = 0; n < N; ++n) cc[n] = s.m[r] * s.o[n];
    const T* Ar = a.Aqn + r * a.Qmax * N;
    const int64_t qr = a.Q[r];
    int64_t q = 0;
    for (; q + 8 <= qr; q += 8) {
      V k0 = kb[q], k1 = kb[q + 1], k2 = kb[q + 2], k3 = kb[q + 3];
      V k4 = kb[q + 4], k5 = kb[q + 5], k6 = kb[q + 6], k7 = kb[q + 7];
      const T* Aq = Ar + q * N;
      for (int64_t n = 0; n < N; ++n) {
        const V c = cc[n];
        k0 += c * Aq[n];
        k1 += c * Aq[N + n];
        k2 += c * Aq[2 * N + n];
        k3 += c * Aq[3 * N + n];
        k4 += c * Aq[4 * N + n];
        k5 += c * Aq[5 * N + n];
        k6 += c * Aq[6 * N + n];
        k7 += c * Aq[7 * N + n];
      }
      kb[q] = k0; kb[q + 1] = k1; kb[q + 2] = k2; kb[q + 3] = k3;
      kb[q + 4] = k4; kb[q + 5] = k5; kb[q + 6] = k6; kb[q + 7] = k7;
    }
    for (; q < qr; ++q) {
      V acc = kb[q];
      const T* Aq = Ar + q * N;
      for (int64_t n = 0; n < N; ++n) acc += cc[n] * Aq[n];
      kb[q] = acc;
    }
  }
}

// sum_{q < nq} x[q] * load(base + off[q]), four partial sums.
template <class V, class T>
INIK_AI V dot_taps(const V* x, const T* base, const int64_t* off, int64_t nq) {
  V s0{}, s1{}, s2{}, s3{};
  int64_t q = 0;
  for (; q + 4 <= nq; q += 4) {
    s0 += x[q] * loadu<V>(base + off[q]);
    s1 += x[q + 1] * loadu<V>(base + off[q + 1]);
    s2 += x[q + 2] * loadu<V>(base + off[q + 2]);
    s3 += x[q + 3] * loadu<V>(base + off[q + 3]);
  }
  for (; q < nq; ++q) s0 += x[q] * loadu<V>(base + off[q]);
  return (s0 + s1) + (s2 + s3);
}

// dc[n] = sum_{q < nq} dk[q] * A[q, n] (A: taps x N, n fastest). Eight taps at a
// time with their dk vectors in registers, so each accumulator load/store serves
// eight multiply-adds (two independent chains per n).
template <class V, class T>
INIK_AI void coeff_grads(const V* dk, const T* A, int64_t N, int64_t nq, V* dc) {
  for (int64_t n = 0; n < N; ++n) dc[n] = V{};
  int64_t q = 0;
  for (; q + 8 <= nq; q += 8) {
    const V d0 = dk[q], d1 = dk[q + 1], d2 = dk[q + 2], d3 = dk[q + 3];
    const V d4 = dk[q + 4], d5 = dk[q + 5], d6 = dk[q + 6], d7 = dk[q + 7];
    const T* Aq = A + q * N;
    for (int64_t n = 0; n < N; ++n) {
      V x = dc[n] + d0 * Aq[n];
      V y = d1 * Aq[N + n];
      x += d2 * Aq[2 * N + n];
      y += d3 * Aq[3 * N + n];
      x += d4 * Aq[4 * N + n];
      y += d5 * Aq[5 * N + n];
      x += d6 * Aq[6 * N + n];
      y += d7 * Aq[7 * N + n];
      dc[n] = x + y;
    }
  }
  for (; q < nq; ++q) {
    const V d = dk[q];
    const T* Aq = A + q * N;
    for (int64_t n = 0; n < N; ++n) dc[n] += d * Aq[n];
  }
}

template <class V, class T> INIK_AI void forward_rows_t(const Args<T>& a, int64_t row0, int64_t row1) {
  constexpr int64_t L = lanes<V, T>();
  Scratch<V, T> s(a);
  const int64_t hw = a.H * a.W;
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t b = row / a.H, i = row % a.H;
    for (int64_t j0 = 0; j0 < a.W; j0 += L) {
      const int64_t valid = std::min<int64_t>(L, a.W - j0);
      const int64_t pix = i * a.W + j0;
      load_coeffs(a, s, b, pix, valid);
      synthesise(a, s);
      for (int64_t c = 0; c < a.C; ++c) {
        const T* yb = a.ypad + ((b * a.C + c) * a.Hp + i + a.h) * a.Wp + j0 + a.h;
        store_tile(a.out + (b * a.C + c) * hw + pix, dot_taps(s.kb, yb, a.off, a.Qmax), valid);
      }
    }
  }
}

template <class V, class T>
INIK_AI void backward_chunk_t(const Args<T>& a, int64_t b, int64_t i0, int64_t i1, T* D) {
  constexpr int64_t L = lanes<V, T>();
  Scratch<V, T> s(a);
  const int64_t hw = a.H * a.W;
  const bool need_dk = a.need_dmu || a.need_dom || a.need_datoms;
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t j0 = 0; j0 < a.W; j0 += L) {
      const int64_t valid = std::min<int64_t>(L, a.W - j0);
      const int64_t pix = i * a.W + j0;
      load_coeffs(a, s, b, pix, valid);
      for (int64_t c = 0; c < a.C; ++c) s.g[c] = load_tile<V>(a.dx + (b * a.C + c) * hw + pix, valid);
      const int64_t base = (i + a.h) * a.Wp + j0 + a.h;  // tile origin in a padded plane

      if (a.need_dy) {  // dy[p + d_q] += k[p, q] * dx[p]
        synthesise(a, s);
        for (int64_t c = 0; c < a.C; ++c) {
          T* db = a.dypad + (b * a.C + c) * a.Hp * a.Wp + base;
          const V gc = s.g[c];
          for (int64_t t = 0; t < a.Qmax; ++t) {
            const int q = a.scatter[t];
            T* p = db + a.off[q];
            storeu(p, loadu<V>(p) + s.kb[q] * gc);
          }
        }
      }
      if (!need_dk) continue;

      // dk[q] = sum_c dx[c] * y[c, p + d_q]
      {
        const int64_t plane = a.Hp * a.Wp;
        const T* yb = a.ypad + b * a.C * plane + base;
        for (int64_t q = 0; q < a.Qmax; ++q) {
          const T* yq = yb + a.off[q];
          V d{};
          for (int64_t c = 0; c < a.C; ++c) d += s.g[c] * loadu<V>(yq + c * plane);
          s.dk[q] = d;
        }
      }

      if (a.need_dmu || a.need_dom) {  // dcoef[r, n] = <dk, A[r, n]>
        for (int64_t n = 0; n < a.N; ++n) s.domacc[n] = V{};
        for (int64_t r = 0; r < a.R; ++r) {
          const int64_t qr = a.Q[r];
          coeff_grads(s.dk, a.Aqn + r * a.Qmax * a.N, a.N, qr, s.dc);
          if (a.need_dmu) {
            V acc{};
            for (int64_t n = 0; n < a.N; ++n) acc += s.o[n] * s.dc[n];
            store_tile(a.dmu + (b * a.R + r) * hw + pix, acc, valid);
          }
          if (a.need_dom)
            for (int64_t n = 0; n < a.N; ++n) s.domacc[n] += s.m[r] * s.dc[n];
        }
        if (a.need_dom)
          for (int64_t n = 0; n < a.N; ++n) store_tile(a.dom + (b * a.N + n) * hw + pix, s.domacc[n], valid);
      }

      if (a.need_datoms) {  // D[r, n, q] += sum_lanes mu_r * omega_n * dk[q]
        T* dkT = s.dkT;  // (L, Qpad): taps fastest, so the update vectorises along taps
        for (int64_t q = 0; q < a.Qmax; ++q) {
          T lanes[L];
          storeu(lanes, s.dk[q]);
          for (int64_t jj = 0; jj < L; ++jj) dkT[jj * a.Qpad + q] = lanes[jj];
        }
        T* cs = s.cs;  // (N, L): mu_r * omega_n per lane
        for (int64_t r = 0; r < a.R; ++r) {
          const int64_t qr = a.Q[r];
          for (int64_t n = 0; n < a.N; ++n) storeu(cs + n * L, s.m[r] * s.o[n]);
          int64_t n = 0;
          for (; n + 4 <= a.N; n += 4) {  // four atoms share each dk load
            const T *c0 = cs + n * L, *c1 = c0 + L, *c2 = c1 + L, *c3 = c2 + L;
            T* D0 = D + (r * a.N + n) * a.Qpad;
            for (int64_t q0 = 0; q0 < qr; q0 += L) {  // may run past qr into Qpad; masked at the end
              const T* col = dkT + q0;
              V s0{}, s1{}, s2{}, s3{};
              for (int64_t jj = 0; jj < L; ++jj) {
                const V d = loadu<V>(col + jj * a.Qpad);
                s0 += c0[jj] * d;
                s1 += c1[jj] * d;
                s2 += c2[jj] * d;
                s3 += c3[jj] * d;
              }
              storeu(D0 + q0, loadu<V>(D0 + q0) + s0);
              storeu(D0 + a.Qpad + q0, loadu<V>(D0 + a.Qpad + q0) + s1);
              storeu(D0 + 2 * a.Qpad + q0, loadu<V>(D0 + 2 * a.Qpad + q0) + s2);
              storeu(D0 + 3 * a.Qpad + q0, loadu<V>(D0 + 3 * a.Qpad + q0) + s3);
            }
          }
          for (; n < a.N; ++n) {
            const T* c0 = cs + n * L;
            T* D0 = D + (r * a.N + n) * a.Qpad;
            for (int64_t q0 = 0; q0 < qr; q0 += L) {
              const T* col = dkT + q0;
              V s0{}, s1{};
              for (int64_t jj = 0; jj < L; jj += 2) {
                s0 += c0[jj] * loadu<V>(col + jj * a.Qpad);
                s1 += c0[jj + 1] * loadu<V>(col + (jj + 1) * a.Qpad);
              }
              storeu(D0 + q0, loadu<V>(D0 + q0) + (s0 + s1));
            }
          }
        }
      }
    }
  }
}

// One entry point per instruction set and accumulation type, picked at run time
// (pick_isa: the CPU's best, or INIK_CPU_ISA's choice passed down as the op's isa).
#define INIK_IFM_ENTRIES(SUFFIX, TARGET, BYTES)                                                          \
  TARGET void forward_rows_##SUFFIX(const Args<float>& a, int64_t r0, int64_t r1) {                     \
    forward_rows_t<Vecs<BYTES>::f>(a, r0, r1);                                                          \
  }                                                                                                      \
  TARGET void forward_rows_##SUFFIX(const Args<double>& a, int64_t r0, int64_t r1) {                    \
    forward_rows_t<Vecs<BYTES>::d>(a, r0, r1);                                                          \
  }                                                                                                      \
  TARGET void backward_chunk_##SUFFIX(const Args<float>& a, int64_t b, int64_t i0, int64_t i1, float* D) { \
    backward_chunk_t<Vecs<BYTES>::f>(a, b, i0, i1, D);                                                  \
  }                                                                                                      \
  TARGET void backward_chunk_##SUFFIX(const Args<double>& a, int64_t b, int64_t i0, int64_t i1,          \
                                      double* D) {                                                       \
    backward_chunk_t<Vecs<BYTES>::d>(a, b, i0, i1, D);                                                  \
  }

#ifdef INIK_CPU_ISAS
INIK_IFM_ENTRIES(avx512, INIK_TARGET_AVX512, 64)
INIK_IFM_ENTRIES(avx2, INIK_TARGET_AVX2, 32)
#endif
// the build's own width: 128 bits for a baseline x86-64 or NEON build, wider under -march=native
#if defined(__AVX512F__)
INIK_IFM_ENTRIES(generic, , 64)
#elif defined(__AVX__)
INIK_IFM_ENTRIES(generic, , 32)
#else
INIK_IFM_ENTRIES(generic, , 16)
#endif

template <class T> void forward_rows(Isa isa, const Args<T>& a, int64_t r0, int64_t r1) {
#ifdef INIK_CPU_ISAS
  if (isa >= kAvx512) return forward_rows_avx512(a, r0, r1);
  if (isa == kAvx2) return forward_rows_avx2(a, r0, r1);
#endif
  forward_rows_generic(a, r0, r1);
}

template <class T> void backward_chunk(Isa isa, const Args<T>& a, int64_t b, int64_t i0, int64_t i1, T* D) {
#ifdef INIK_CPU_ISAS
  if (isa >= kAvx512) return backward_chunk_avx512(a, b, i0, i1, D);
  if (isa == kAvx2) return backward_chunk_avx2(a, b, i0, i1, D);
#endif
  backward_chunk_generic(a, b, i0, i1, D);
}

template <class T> Args<T> make_args(const Geometry& g, const at::Tensor& ypad, const at::Tensor& mu,
                                     const at::Tensor& om, const at::Tensor& Aqn) {
  Args<T> a{};
  a.ypad = ypad.data_ptr<T>();
  a.mu = mu.data_ptr<T>();
  a.om = om.data_ptr<T>();
  a.Aqn = Aqn.data_ptr<T>();
  a.Q = g.Q.data();
  a.off = g.off.data();
  a.B = g.B; a.C = g.C; a.H = g.H; a.W = g.W; a.R = g.R; a.N = g.N;
  a.Qmax = g.Qmax; a.Qpad = g.Qpad; a.Hp = g.Hp; a.Wp = g.Wp; a.h = g.h;
  return a;
}

}  // namespace cpu

at::Tensor ifm_forward_cpu(const at::Tensor& image, const at::Tensor& mu, const at::Tensor& omega,
                           const at::Tensor& atoms, at::IntArrayRef support, c10::string_view isa_name) {
  const Geometry g = check_and_plan("ifm_native_forward", image, mu, omega, atoms, support);
  const Isa isa = pick_isa(isa_name);
  const auto acc = acc_type(image.scalar_type());
  at::Tensor ypad = padded_image(image, g);
  at::Tensor mu_c = mu.to(acc).contiguous(), om_c = omega.to(acc).contiguous();
  at::Tensor Aqn = packed_atoms(atoms, g);
  at::Tensor out = at::empty({g.B, g.C, g.H, g.W}, image.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "ifm_native_forward_cpu", [&] {
    auto a = cpu::make_args<scalar_t>(g, ypad, mu_c, om_c, Aqn);
    a.out = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.B * g.H, 1, [&](int64_t r0, int64_t r1) { cpu::forward_rows(isa, a, r0, r1); });
  });
  return out.to(image.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ifm_backward_cpu(
    const at::Tensor& grad, const at::Tensor& image, const at::Tensor& mu, const at::Tensor& omega,
    const at::Tensor& atoms, at::IntArrayRef support, std::array<bool, 4> needs, c10::string_view isa_name) {
  const Geometry g = check_and_plan_backward(grad, image, mu, omega, atoms, support);
  const Isa isa = pick_isa(isa_name);
  const auto st = image.scalar_type();
  const auto acc = acc_type(st);
  const auto opt = image.options().dtype(acc);
  at::Tensor none_image = at::empty({0}, image.options()), none_mu = at::empty({0}, mu.options()),
             none_om = at::empty({0}, omega.options()), none_atoms = at::empty({0}, atoms.options());
  if (!(needs[0] || needs[1] || needs[2] || needs[3])) return {none_image, none_mu, none_om, none_atoms};

  at::Tensor ypad = padded_image(image, g);
  at::Tensor mu_c = mu.to(acc).contiguous(), om_c = omega.to(acc).contiguous();
  at::Tensor dx = grad.to(acc).contiguous();
  at::Tensor Aqn = packed_atoms(atoms, g);
  at::Tensor dypad = needs[0] ? at::zeros({g.B, g.C, g.Hp, g.Wp}, opt) : at::Tensor();
  at::Tensor dmu = needs[1] ? at::empty({g.B, g.R, g.H, g.W}, opt) : at::Tensor();
  at::Tensor dom = needs[2] ? at::empty({g.B, g.N, g.H, g.W}, opt) : at::Tensor();

  const int64_t chunk_rows = bwd_chunk_rows(g.h);
  const int64_t chunks_per_image = (g.H + chunk_rows - 1) / chunk_rows;
  const int64_t chunks = g.B * chunks_per_image;
  // at least one group: with no chunks (B or H = 0) the atom gradient is that group's zeros
  const int64_t groups = std::max<int64_t>(1, std::min(chunks, kMaxAtomPartials));
  at::Tensor dpart = needs[3] ? at::zeros({groups, g.R, g.N, g.Qpad}, opt) : at::Tensor();
  // Scatter taps column-offset-major so consecutive read-modify-writes hit different rows.
  std::vector<int> scatter(g.Qmax);
  for (int64_t q = 0; q < g.Qmax; ++q) scatter[q] = static_cast<int>(q);
  std::stable_sort(scatter.begin(), scatter.end(), [&](int x, int y) {
    return g.dv[x] != g.dv[y] ? g.dv[x] < g.dv[y] : g.du[x] < g.du[y];
  });

  AT_DISPATCH_FLOATING_TYPES(acc, "ifm_native_backward_cpu", [&] {
    auto a = cpu::make_args<scalar_t>(g, ypad, mu_c, om_c, Aqn);
    a.dx = dx.data_ptr<scalar_t>();
    a.dypad = needs[0] ? dypad.data_ptr<scalar_t>() : nullptr;
    a.dmu = needs[1] ? dmu.data_ptr<scalar_t>() : nullptr;
    a.dom = needs[2] ? dom.data_ptr<scalar_t>() : nullptr;
    a.dpart = needs[3] ? dpart.data_ptr<scalar_t>() : nullptr;
    a.scatter = scatter.data();
    a.need_dy = needs[0];
    a.need_dmu = needs[1];
    a.need_dom = needs[2];
    a.need_datoms = needs[3];
    const int64_t part_size = g.R * g.N * g.Qpad;
    // Phase 0: even chunks of every image, phase 1: odd ones (see the file comment).
    for (int64_t phase = 0; phase < 2; ++phase) {
      at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
        for (int64_t grp = g0; grp < g1; ++grp) {
          scalar_t* D = a.dpart ? a.dpart + grp * part_size : nullptr;
          for (int64_t m = grp * chunks / groups; m < (grp + 1) * chunks / groups; ++m) {
            const int64_t b = m / chunks_per_image, k = m % chunks_per_image;
            if (k % 2 != phase) continue;
            cpu::backward_chunk(isa, a, b, k * chunk_rows, std::min(g.H, (k + 1) * chunk_rows), D);
          }
        }
      });
    }
    if (needs[3]) {  // sum the group partials in group order
      scalar_t* p = a.dpart;
      for (int64_t grp = 1; grp < groups; ++grp) {
        const scalar_t* src = p + grp * part_size;
        for (int64_t e = 0; e < part_size; ++e) p[e] += src[e];
      }
    }
  });

  at::Tensor g_image = none_image, g_mu = none_mu, g_om = none_om, g_atoms = none_atoms;
  if (needs[0])
    g_image = dypad.narrow(2, g.h, g.H).narrow(3, g.h, g.W).to(st).contiguous();
  if (needs[1]) g_mu = dmu.to(st);
  if (needs[2]) g_om = dom.to(st);
  if (needs[3]) g_atoms = unpack_atom_grad(dpart[0], g, st);
  return {g_image, g_mu, g_om, g_atoms};
}

}  // namespace inik

TORCH_LIBRARY_FRAGMENT(inik, m) {
  // isa: the CPU kernel's instruction set ("": the best; CUDA ignores it)
  m.def(
      "ifm_native_forward(Tensor image, Tensor mu, Tensor omega, Tensor atoms, int[] support, str isa='') "
      "-> Tensor");
  m.def(
      "ifm_native_backward(Tensor grad, Tensor image, Tensor mu, Tensor omega, Tensor atoms, int[] support, "
      "bool[4] needs, str isa='') -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(inik, CPU, m) {
  m.impl("ifm_native_forward", &inik::ifm_forward_cpu);
  m.impl("ifm_native_backward", &inik::ifm_backward_cpu);
}

// `import inik._C` loads this library (registering the ops above); the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
