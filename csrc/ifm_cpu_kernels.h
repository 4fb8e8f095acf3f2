// The IFM's CPU kernels as templates over a vector type (GCC/Clang vector extensions),
// free of torch: ifm_cpu.cpp instantiates them per instruction set and runs them on
// tensors; tests/ifm_cpu_standalone.cpp runs them on plain arrays (on any architecture,
// e.g. aarch64 under qemu) against a scalar reference. ifm_cpu.cpp's head comment says
// how the work is laid out.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_simd.h"

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

}  // namespace cpu
}  // namespace inik
