// CUDA kernels of the IFM (torch-free: compile-checkable with plain nvcc).
//
// Inputs are prepared on the host (ifm_host.h): the image zero-padded to
// (B, C, Hp, Wp), mu/omega/grad contiguous, atoms packed in ring tap order as
// (R, Qmax, N) and zero outside each scale's support, all in the accumulation
// type T (float for fp32/fp16/bf16, double for fp64). One thread per pixel;
// per-thread working values live in dynamic shared memory as [value][thread] with
// a row pitch of blockDim + 1, so both a warp reading one value of 32 threads and
// a warp reading 32 values of one thread are bank-conflict free; atom reads are
// uniform across a warp (broadcast).
//
// Backward is deterministic and atomic-free: the image gradient is a gather over
// the windows covering each pixel, the atom gradient is reduced per block into
// its own partial buffer and the partials are summed in block order.
#pragma once

#include <cstdint>

#include "ifm_common.h"

namespace inik {
namespace cuda {

struct Geom {
  int64_t B, C, H, W, R, N, Qmax, Hp, Wp, h;
};

// Shared-memory values per thread of each kernel (times sizeof(T) * (blockDim + 1) bytes).
inline int64_t fwd_smem_values(const Geom& g) { return g.R + g.N + g.C; }
inline int64_t dy_smem_values(const Geom& g) { return g.R + g.N + g.C; }
inline int64_t param_smem_values(const Geom& g) { return g.R + g.N + g.C + 1 + g.R * g.N; }

inline int64_t smem_bytes(int64_t values_per_thread, int64_t elem_size, int bd) {
  return values_per_thread * elem_size * (bd + 1);
}

// Largest block size in {256, 128, 64, 32} whose shared memory fits `limit` bytes (32 if none does).
inline int pick_block(int64_t values_per_thread, int64_t elem_size, int64_t limit) {
  for (int bd = 256; bd > 32; bd /= 2)
    if (smem_bytes(values_per_thread, elem_size, bd) <= limit) return bd;
  return 32;
}

template <class T>
__global__ void ifm_forward_kernel(const T* __restrict__ ypad, const T* __restrict__ mu,
                                   const T* __restrict__ om, const T* __restrict__ Aqn,
                                   const int64_t* __restrict__ off, const int* __restrict__ Q,
                                   T* __restrict__ out, Geom g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  const int t = threadIdx.x, bd = blockDim.x, pitch = bd + 1;
  T* mu_s = sm;
  T* om_s = mu_s + g.R * pitch;
  T* acc_s = om_s + g.N * pitch;
  const int64_t hw = g.H * g.W;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * bd + t;
  if (pix >= g.B * hw) return;  // no block-wide synchronisation below
  const int64_t b = pix / hw, rem = pix - b * hw, i = rem / g.W, j = rem - i * g.W;
  for (int64_t r = 0; r < g.R; ++r) mu_s[r * pitch + t] = mu[(b * g.R + r) * hw + rem];
  for (int64_t n = 0; n < g.N; ++n) om_s[n * pitch + t] = om[(b * g.N + n) * hw + rem];
  for (int64_t c = 0; c < g.C; ++c) acc_s[c * pitch + t] = T(0);
  const int64_t plane = g.Hp * g.Wp;
  const T* yb = ypad + (b * g.C * g.Hp + i + g.h) * g.Wp + j + g.h;
  for (int64_t q = 0; q < g.Qmax; ++q) {
    T kq = T(0);  // the synthesised kernel's tap q at this pixel
    for (int64_t r = 0; r < g.R; ++r) {
      if (q >= Q[r]) continue;
      const T* Aq = Aqn + (r * g.Qmax + q) * g.N;
      T s = T(0);
      for (int64_t n = 0; n < g.N; ++n) s += om_s[n * pitch + t] * Aq[n];
      kq += mu_s[r * pitch + t] * s;
    }
    const T* yq = yb + off[q];
    for (int64_t c = 0; c < g.C; ++c) acc_s[c * pitch + t] += kq * yq[c * plane];
  }
  for (int64_t c = 0; c < g.C; ++c) out[(b * g.C + c) * hw + rem] = acc_s[c * pitch + t];
}

// dy[b, c, p] = sum_q k[p - d_q, q] * dx[b, c, p - d_q]  (gather; k synthesised on the fly).
template <class T>
__global__ void ifm_image_grad_kernel(const T* __restrict__ dx, const T* __restrict__ mu,
                                      const T* __restrict__ om, const T* __restrict__ Aqn,
                                      const int* __restrict__ du, const int* __restrict__ dv,
                                      const int* __restrict__ Q, T* __restrict__ dy, Geom g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  const int t = threadIdx.x, bd = blockDim.x, pitch = bd + 1;
  T* mu_s = sm;
  T* om_s = mu_s + g.R * pitch;
  T* acc_s = om_s + g.N * pitch;
  const int64_t hw = g.H * g.W;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * bd + t;
  if (pix >= g.B * hw) return;
  const int64_t b = pix / hw, rem = pix - b * hw, p = rem / g.W, pc = rem - p * g.W;
  for (int64_t c = 0; c < g.C; ++c) acc_s[c * pitch + t] = T(0);
  for (int64_t q = 0; q < g.Qmax; ++q) {
    const int64_t i = p - du[q], j = pc - dv[q];  // the pixel whose window reaches p through tap q
    if (i < 0 || i >= g.H || j < 0 || j >= g.W) continue;
    const int64_t src = i * g.W + j;
    for (int64_t r = 0; r < g.R; ++r) mu_s[r * pitch + t] = mu[(b * g.R + r) * hw + src];
    for (int64_t n = 0; n < g.N; ++n) om_s[n * pitch + t] = om[(b * g.N + n) * hw + src];
    T kq = T(0);
    for (int64_t r = 0; r < g.R; ++r) {
      if (q >= Q[r]) continue;
      const T* Aq = Aqn + (r * g.Qmax + q) * g.N;
      T s = T(0);
      for (int64_t n = 0; n < g.N; ++n) s += om_s[n * pitch + t] * Aq[n];
      kq += mu_s[r * pitch + t] * s;
    }
    for (int64_t c = 0; c < g.C; ++c) acc_s[c * pitch + t] += kq * dx[(b * g.C + c) * hw + src];
  }
  for (int64_t c = 0; c < g.C; ++c) dy[(b * g.C + c) * hw + rem] = acc_s[c * pitch + t];
}

// Gradients for mu and omega (per pixel) and per-block partials of the atom gradient:
//   dk[q]          = sum_c dx[c] * y[c, p + d_q]
//   dcoef[r, n]    = sum_{q < Q_r} A[r, q, n] * dk[q]
//   dmu[r]         = sum_n omega[n] * dcoef[r, n],  domega[n] = sum_r mu[r] * dcoef[r, n]
//   part[blk, r, n, q] += sum_{pixels of the block} mu[r] * omega[n] * dk[q]   (q < Q_r)
// Blocks stride over the pixels (grid-stride loop, uniform per block so the
// barriers are safe); part must be zero-initialised, (gridDim.x, R, N, Qmax).
template <class T>
__global__ void ifm_param_grad_kernel(const T* __restrict__ ypad, const T* __restrict__ dx,
                                      const T* __restrict__ mu, const T* __restrict__ om,
                                      const T* __restrict__ Aqn, const int64_t* __restrict__ off,
                                      const int* __restrict__ Q, T* __restrict__ dmu,
                                      T* __restrict__ dom, T* __restrict__ part, Geom g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  const int t = threadIdx.x, bd = blockDim.x, pitch = bd + 1;
  T* mu_s = sm;
  T* om_s = mu_s + g.R * pitch;
  T* dx_s = om_s + g.N * pitch;
  T* dk_s = dx_s + g.C * pitch;
  T* dc_s = dk_s + pitch;
  const bool need_coef = dmu != nullptr || dom != nullptr;
  const int64_t hw = g.H * g.W, total = g.B * hw, plane = g.Hp * g.Wp;
  const int64_t RN = g.R * g.N;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * bd; base < total;
       base += static_cast<int64_t>(gridDim.x) * bd) {
    const int64_t pix = base + t;
    const bool valid = pix < total;
    int64_t b = 0, rem = 0;
    const T* yb = ypad;
    if (valid) {
      b = pix / hw;
      rem = pix - b * hw;
      const int64_t i = rem / g.W, j = rem - i * g.W;
      yb = ypad + (b * g.C * g.Hp + i + g.h) * g.Wp + j + g.h;
    }
    for (int64_t r = 0; r < g.R; ++r) mu_s[r * pitch + t] = valid ? mu[(b * g.R + r) * hw + rem] : T(0);
    for (int64_t n = 0; n < g.N; ++n) om_s[n * pitch + t] = valid ? om[(b * g.N + n) * hw + rem] : T(0);
    for (int64_t c = 0; c < g.C; ++c) dx_s[c * pitch + t] = valid ? dx[(b * g.C + c) * hw + rem] : T(0);
    if (need_coef)
      for (int64_t e = 0; e < RN; ++e) dc_s[e * pitch + t] = T(0);
    for (int64_t q = 0; q < g.Qmax; ++q) {
      T dk = T(0);
      if (valid) {
        const T* yq = yb + off[q];
        for (int64_t c = 0; c < g.C; ++c) dk += dx_s[c * pitch + t] * yq[c * plane];
      }
      if (need_coef) {
        for (int64_t r = 0; r < g.R; ++r) {
          if (q >= Q[r]) continue;
          const T* Aq = Aqn + (r * g.Qmax + q) * g.N;
          for (int64_t n = 0; n < g.N; ++n) dc_s[(r * g.N + n) * pitch + t] += Aq[n] * dk;
        }
      }
      if (part != nullptr) {
        dk_s[t] = dk;
        __syncthreads();
        for (int64_t e = t; e < RN; e += bd) {
          const int64_t r = e / g.N, n = e - r * g.N;
          if (q >= Q[r]) continue;
          T s = T(0);
          for (int p = 0; p < bd; ++p) s += mu_s[r * pitch + p] * om_s[n * pitch + p] * dk_s[p];
          part[(static_cast<int64_t>(blockIdx.x) * RN + e) * g.Qmax + q] += s;
        }
        __syncthreads();
      }
    }
    if (valid && need_coef) {
      if (dmu != nullptr)
        for (int64_t r = 0; r < g.R; ++r) {
          T s = T(0);
          for (int64_t n = 0; n < g.N; ++n) s += om_s[n * pitch + t] * dc_s[(r * g.N + n) * pitch + t];
          dmu[(b * g.R + r) * hw + rem] = s;
        }
      if (dom != nullptr)
        for (int64_t n = 0; n < g.N; ++n) {
          T s = T(0);
          for (int64_t r = 0; r < g.R; ++r) s += mu_s[r * pitch + t] * dc_s[(r * g.N + n) * pitch + t];
          dom[(b * g.N + n) * hw + rem] = s;
        }
    }
  }
}

// out[e] = sum_{p < parts} part[p, e], in p order (deterministic).
template <class T>
__global__ void ifm_sum_partials_kernel(const T* __restrict__ part, int64_t parts, int64_t n,
                                        T* __restrict__ out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  T s = T(0);
  for (int64_t p = 0; p < parts; ++p) s += part[p * n + e];
  out[e] = s;
}

}  // namespace cuda
}  // namespace inik
