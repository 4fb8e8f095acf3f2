// 3x3 stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3) or F(6x6, 3x3),
// for the CPU, in channels_last layout:
//
//   inik::conv3x3_winograd(x, weight, bias?, residual?, padding_mode, relu, tile=0, bf16_gemm=True) -> y
//   y = conv2d(pad1(x, padding_mode), weight) + bias [+ residual], then max(., 0) if relu
//
// x: (B, Ci, H, W) channels_last-contiguous, float32 or bfloat16; weight (Co, Ci, 3, 3)
// (any layout, any float dtype); bias (Co); residual like y. y is channels_last in
// x's dtype. padding_mode "zeros" or "reflect". tile: the output tile side, 4 or 6; 0
// picks one for the image's size (pick_tile). Everything is computed in float32,
// except with bf16_gemm, bfloat16 x and a CPU with AVX512-BF16: the GEMM then takes its
// operands (the transformed input and weights) rounded to bfloat16 and sums their
// products in float32, at twice the rate (Kernel::gemm). That rounding costs
// accuracy: a relative RMS error of about 0.6% of the output on the model's
// activations (oneDNN's bfloat16 convolution: 0.2%; float32 GEMM: 0.17%, mostly
// the output's own rounding), 2.5% (F(4x4)) and 5% (F(6x6)) on random data.
//
// Why: the network's time on a CPU is in its 3x3 convolutions (64 channels at full
// resolution), which oneDNN runs near the cores' fp32 FMA peak. F(4x4, 3x3) needs
// 36 multiply-adds per input channel for 16 outputs instead of 144, F(6x6, 3x3) 64 for
// 36, plus input and output transforms (about 40% of the time at 640x640, mostly
// streaming the input and output through memory, which the kernel prefetches). The
// rounding error is larger than a direct convolution's (5-15x in float32, about 3e-6
// relative, for F(4x4); about twice that for F(6x6)).
//
// Each work item is kTB = 6 adjacent m x m output tiles of one tile row. Per item:
// (1) the (m+2)^2 input tiles, padding applied by index, go to the Winograd domain
// (V = B^T d B, one vector of channels at a time); (2) for each of the (m+2)^2 positions
// a GEMM (6 tiles x Ci) @ (Ci x Co), a block of output channels at a time in
// registers - 6 x 64 in 24 zmm on AVX-512, 6 x 16 in 12 ymm on AVX2; (3) the output
// transform A^T M A, bias, residual and ReLU, stored. V and M stay in L1/L2. The
// kernel for the CPU's instruction set is picked at run time (INIK_CPU_ISA can ask
// for a lesser one, for tests and timings).
//
//   inik::conv3x3_winograd_weight_grad(x, grad, padding_mode, isa='', chunk=0) -> dL/dweight
//   The weight gradient of that convolution (float32, no bias), in F(4x4, 3x3)'s domain:
//   dW = G^T [sum over tiles of (A dY A^T) (.) (B^T d B), per channel pair] G - a
//   GEMM over tiles at each of the 36 positions, 4x fewer multiplies than the direct
//   sum over pixels. Tiles go in chunks (chunk tiles; 0: scratch of about 6 MB) whose
//   transforms stay in cache for the GEMM (ATen's batched matmul).
//
//   inik::conv3x3_winograd_isa() -> str: the kernel that calls run now ("avx512_bf16", "avx512",
//   "avx2", "generic"; avx512_bf16 differs from avx512 in the bfloat16 GEMM only).
//   inik::conv3x3_winograd_tile(H, W) -> int: the tile side tile=0 picks for an H x W image.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>

#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "cpu_simd.h"
#include "ifm_host.h"

namespace inik {
namespace wino {

using simd::Vec;

constexpr int kTB = 6;  // tiles per work item (the GEMM's rows)

struct Plan {
  int64_t B, Ci, Co, H, W, th, tw, Cip, Cop;  // Cip, Cop: channels rounded up to the kernel's lanes
  bool reflect, relu;
};

// F(m x m, 3x3): an (m + 2)^2 input tile gives m x m outputs. Tile<m>::bt takes one
// column (or row) d[0 .. m+2) of the input tile to B^T d, Tile<m>::at one of the
// Winograd domain's to A^T m; G is the weight transform (in double). Every lane of
// F is a channel. Interpolation points 0, +-1, +-2 (and +-1/2 for m = 6), infinity.
template <int m>
struct Tile;

template <>
struct Tile<4> {
  static constexpr int a = 6;
  static constexpr double G[6][3] = {{0.25, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  template <class F>
  static INIK_AI void bt(const F* d, F* o) {
    o[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    o[1] = -4.0f * (d[1] + d[2]) + d[3] + d[4];
    o[2] = 4.0f * (d[1] - d[2]) - d[3] + d[4];
    o[3] = 2.0f * (d[3] - d[1]) - d[2] + d[4];
    o[4] = 2.0f * (d[1] - d[3]) - d[2] + d[4];
    o[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
  }
  template <class F>
  static INIK_AI void at(const F* m, F* o) {
    const F s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    o[0] = m[0] + s12 + s34;
    o[1] = d12 + 2.0f * d34;
    o[2] = s12 + 4.0f * s34;
    o[3] = d12 + 8.0f * d34 + m[5];
  }
  // A y, the adjoint of at: an m-vector of output gradients to the Winograd domain.
  template <class F>
  static INIK_AI void at_adjoint(const F* y, F* o) {
    const F s02 = y[0] + y[2], s13 = y[1] + y[3], t02 = y[0] + 4.0f * y[2], t13 = 2.0f * y[1] + 8.0f * y[3];
    o[0] = y[0];
    o[1] = s02 + s13;
    o[2] = s02 - s13;
    o[3] = t02 + t13;
    o[4] = t02 - t13;
    o[5] = y[3];
  }
};

template <>
struct Tile<6> {
  static constexpr int a = 8;
  static constexpr double G[8][3] = {{1, 0, 0},
                                     {-2.0 / 9, -2.0 / 9, -2.0 / 9},
                                     {-2.0 / 9, 2.0 / 9, -2.0 / 9},
                                     {1.0 / 90, 1.0 / 45, 2.0 / 45},
                                     {1.0 / 90, -1.0 / 45, 2.0 / 45},
                                     {32.0 / 45, 16.0 / 45, 8.0 / 45},
                                     {32.0 / 45, -16.0 / 45, 8.0 / 45},
                                     {0, 0, 1}};
  template <class F>
  static INIK_AI void bt(const F* d, F* o) {
    o[0] = d[0] - d[6] + 5.25f * (d[4] - d[2]);
    o[7] = d[7] - d[1] + 5.25f * (d[3] - d[5]);
    F t1 = d[2] + d[6] - 4.25f * d[4], t2 = d[1] + d[5] - 4.25f * d[3];
    o[1] = t1 + t2;
    o[2] = t1 - t2;
    t1 = d[6] + 0.25f * d[2] - 1.25f * d[4];
    t2 = 0.5f * d[1] - 2.5f * d[3] + 2.0f * d[5];
    o[3] = t1 + t2;
    o[4] = t1 - t2;
    t1 = d[6] + 4.0f * d[2] - 5.0f * d[4];
    t2 = 2.0f * d[1] - 2.5f * d[3] + 0.5f * d[5];
    o[5] = t1 + t2;
    o[6] = t1 - t2;
  }
  template <class F>
  static INIK_AI void at(const F* m, F* o) {
    const F s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    const F s56 = m[5] + m[6], d56 = m[5] - m[6];
    o[0] = m[0] + s12 + s34 + s56;
    o[1] = d12 + 2.0f * d34 + 0.5f * d56;
    o[2] = s12 + 4.0f * s34 + 0.25f * s56;
    o[3] = d12 + 8.0f * d34 + 0.125f * d56;
    o[4] = s12 + 16.0f * s34 + 0.0625f * s56;
    o[5] = d12 + 32.0f * d34 + 0.03125f * d56 + m[7];
  }
};

// Row (or column) q of the padded input: its index in [0, n), and whether it holds data.
// Reflect padding mirrors -1 -> 1 and n -> n - 2; indices further out only feed outputs
// beyond the image, which are never stored, so they are clamped.
INIK_AI int64_t source_index(int64_t q, int64_t n, bool reflect, bool* valid) {
  if (reflect) {
    q = q < 0 ? -q : (q >= n ? 2 * n - 2 - q : q);
    *valid = true;
  } else {
    *valid = q >= 0 && q < n;
  }
  return std::min<int64_t>(std::max<int64_t>(q, 0), n - 1);
}

// Memory the next steps will read, fetched into cache a little at a time while the
// GEMM computes (the input rows of the next work item, the residual rows of this one):
// at full resolution the convolution streams its input and output from DRAM, and
// without it those loads stall the transforms.
struct Prefetch {
  const char* ptr[16];  // at most 2 m + 2 rows
  int64_t bytes[16];
  int n = 0;
  int64_t lines = 0;  // total cache lines
  void add(const void* p, int64_t b) {
    ptr[n] = static_cast<const char*>(p);
    bytes[n++] = b;
    lines += (b + 63) / 64;
  }
  // the share [part / parts, (part + 1) / parts) of all lines
  INIK_AI void fetch(int part, int parts) const {
    int64_t first = lines * part / parts, last = lines * (part + 1) / parts, base = 0;
    for (int k = 0; k < n && first < last; ++k) {
      const int64_t nl = (bytes[k] + 63) / 64;
      for (; first < last && first < base + nl; ++first) __builtin_prefetch(ptr[k] + (first - base) * 64);
      base += nl;
    }
  }
};

// The kernel for F(m x m, 3x3) on vectors of L floats, with MaxNV output vectors per GEMM block.
// kDot: the GEMM multiplies bfloat16 pairs with AVX512-BF16's vdpbf16ps (the
// Winograd-domain V and U rounded to bfloat16, products summed in float32; see gemm).
template <int L, int MaxNV, int m, bool kDot = false>
struct Kernel {
  using V = Vec<L>;
  using F = typename V::f;
  using TileM = Tile<m>;
  using W = std::conditional_t<kDot, at::BFloat16, float>;  // storage of V and U
  static constexpr int a = TileM::a;   // input tile side
  static constexpr int kA = a * a;     // positions of the Winograd domain

  // V's store: float as is; bfloat16 for the bfloat16 GEMM, rounded by vcvtneps2bf16
  // (to nearest even, as V::store's integer rounding, but one instruction for 16 lanes;
  // it flushes denormals, below 1e-38, to zero).
  static INIK_AI void store_v(W* p, F v) {
#if INIK_DOT_BF16
    if constexpr (kDot) {
      const auto h = __builtin_ia32_cvtneps2bf16_v16sf((__m512)v);
      std::memcpy(p, &h, sizeof(h));
      return;
    }
#endif
    V::store(p, v);
  }

  // (1) Tile t of the item: V[q][t][:] for the a x a input tile at output origin (m ty, m tx);
  // positions q are qstride elements apart.
  template <class T>
  static INIK_AI void input_tile(const T* x, const Plan& p, int64_t b, int64_t ty, int64_t tx, int64_t t, W* Vb,
                                 int64_t qstride) {
    int64_t rows[a], cols[a];
    bool rv[a], cv[a];
    for (int i = 0; i < a; ++i) {
      rows[i] = source_index(m * ty - 1 + i, p.H, p.reflect, &rv[i]);
      cols[i] = source_index(m * tx - 1 + i, p.W, p.reflect, &cv[i]);
    }
    for (int64_t c = 0; c < p.Cip; c += L) {
      const int64_t n = std::min<int64_t>(L, p.Ci - c);
      F u[a][a];  // u[j][i] = (d B)[i][j]: each row transformed as it is loaded
      for (int i = 0; i < a; ++i) {
        F d[a], o[a];
        for (int j = 0; j < a; ++j)
          d[j] = rv[i] && cv[j] ? V::get(x + ((b * p.H + rows[i]) * p.W + cols[j]) * p.Ci + c, n) : F{};
        TileM::bt(d, o);
        for (int j = 0; j < a; ++j) u[j][i] = o[j];
      }
      for (int j = 0; j < a; ++j) {
        F o[a];
        TileM::bt(u[j], o);
        for (int i = 0; i < a; ++i) store_v(Vb + (i * a + j) * qstride + t * p.Cip + c, o[i]);
      }
    }
  }

  // The weight gradient's output-gradient tile: Y[q][t][:] = (A dY A^T)[q] for the m x m
  // gradient tile at (m ty, m tx) of g (B, H, W, Co), zero beyond the image; positions q
  // are qstride elements apart (F(4x4, 3x3) only: Tile<4>::at_adjoint).
  static INIK_AI void grad_tile(const float* g, const Plan& p, int64_t b, int64_t ty, int64_t tx, int64_t t, float* Yb,
                                int64_t qstride) {
    for (int64_t c = 0; c < p.Cop; c += L) {
      const int64_t n = std::min<int64_t>(L, p.Co - c);
      F u[a][m];  // u[j][r] = (dY A^T)[r][j]
      for (int r = 0; r < m; ++r) {
        F d[m], o[a];
        const int64_t y = m * ty + r;
        for (int s = 0; s < m; ++s) {
          const int64_t xx = m * tx + s;
          d[s] = y < p.H && xx < p.W ? V::get(g + ((b * p.H + y) * p.W + xx) * p.Co + c, n) : F{};
        }
        TileM::at_adjoint(d, o);
        for (int j = 0; j < a; ++j) u[j][r] = o[j];
      }
      for (int j = 0; j < a; ++j) {
        F o[a];
        TileM::at_adjoint(u[j], o);
        for (int i = 0; i < a; ++i) V::store(Yb + (i * a + j) * qstride + t * p.Cop + c, o[i]);
      }
    }
  }

  // Tiles [t0 + i0, t0 + i1) of the image (b, ty, tx in row-major order) to chunk rows [i0, i1)
  // of V (kA, chunk, Cip) and Y (kA, chunk, Cop).
  static INIK_AI void weight_grad_tiles(const float* x, const float* g, const Plan& p, int64_t t0, int64_t i0,
                                        int64_t i1, int64_t chunk, float* Vb, float* Yb) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = t0 + i, tx = t % p.tw, ty = (t / p.tw) % p.th, b = t / (p.tw * p.th);
      input_tile(x, p, b, ty, tx, i, Vb, chunk * p.Cip);
      grad_tile(g, p, b, ty, tx, i, Yb, chunk * p.Cop);
    }
  }

  // (2) M[q][t][0 : NV*L] = V[q][t][:Ci] @ U[q][:Ci][co0 : co0 + NV*L] for all kA positions q.
  // With kDot, vdpbf16ps adds a.lo * b.lo + a.hi * b.hi of each lane's pair of bfloat16s
  // to a float32 accumulator - two input channels per instruction, twice the FMAs' rate:
  // V (bfloat16, a tile's channels contiguous) gives a broadcast pair (V[t][2k], V[t][2k+1]);
  // U is stored as (kA, Ci/2 rounded up, Cop, 2), the pair (U[2k][co], U[2k+1][co]) in
  // output channel co's lane. Channels beyond Ci are zero in both.
  template <int NV>
  static INIK_AI void gemm(const W* Vb, const W* U, const Plan& p, int64_t co0, float* M, const Prefetch* pf) {
    for (int q = 0; q < kA; ++q) {
      if (pf) pf->fetch(q, kA);
      F acc[kTB][NV];
      for (int t = 0; t < kTB; ++t)
        for (int v = 0; v < NV; ++v) acc[t][v] = F{};
      const W* va = Vb + q * kTB * p.Cip;
#if INIK_DOT_BF16
      if constexpr (kDot) {
        using I = typename V::i;
        const int64_t pairs = (p.Ci + 1) / 2;
        const W* ua = U + (q * pairs * p.Cop + co0) * 2;
        for (int64_t k = 0; k < pairs; ++k) {
          I w[NV];
          for (int v = 0; v < NV; ++v) std::memcpy(&w[v], ua + (k * p.Cop + v * L) * 2, sizeof(I));
          for (int t = 0; t < kTB; ++t) {
            int32_t pair;
            std::memcpy(&pair, va + t * p.Cip + 2 * k, sizeof(pair));
            const I s = I{} + pair;  // a broadcast
            for (int v = 0; v < NV; ++v) acc[t][v] = dot_bf16(acc[t][v], s, w[v]);
          }
        }
      } else
#endif
      {
        const W* ua = U + q * p.Ci * p.Cop + co0;
        for (int64_t ci = 0; ci < p.Ci; ++ci) {
          F w[NV];
          for (int v = 0; v < NV; ++v) w[v] = V::load(ua + ci * p.Cop + v * L);
          for (int t = 0; t < kTB; ++t) {
            const F s = va[t * p.Cip + ci] - F{};  // a broadcast (x - 0 == x, unlike 0 + x for x = -0)
            for (int v = 0; v < NV; ++v) acc[t][v] += s * w[v];
          }
        }
      }
      for (int t = 0; t < kTB; ++t)
        for (int v = 0; v < NV; ++v) V::store(M + ((t * NV + v) * kA + q) * L, acc[t][v]);
    }
  }

  // (3) Output tile t, channels [co0, co0 + NV*L): A^T M A, bias, residual, ReLU, stored.
  template <class T, int NV>
  static INIK_AI void output_tile(const float* M, const Plan& p, const float* bias, const T* res, T* y, int64_t b,
                                  int64_t ty, int64_t tx, int t, int64_t co0) {
    const int64_t oy0 = m * ty, ox0 = m * tx;
    for (int v = 0; v < NV; ++v) {
      const int64_t c = co0 + v * L;
      if (c >= p.Co) break;
      const int64_t n = std::min<int64_t>(L, p.Co - c);
      const float* Mv = M + (t * NV + v) * kA * L;
      F u[m][a];  // u[r][j] = (A^T M)[r][j]
      for (int j = 0; j < a; ++j) {
        F col[a], o[m];
        for (int i = 0; i < a; ++i) col[i] = V::load(Mv + (i * a + j) * L);
        TileM::at(col, o);
        for (int r = 0; r < m; ++r) u[r][j] = o[r];
      }
      const F bv = bias ? V::load(bias + c) : F{};
      for (int r = 0; r < m && oy0 + r < p.H; ++r) {
        F o[m];
        TileM::at(u[r], o);
        for (int s = 0; s < m && ox0 + s < p.W; ++s) {
          const int64_t off = ((b * p.H + oy0 + r) * p.W + ox0 + s) * p.Co + c;
          F out = o[s] + bv;
          if (res) out += V::get(res + off, n);
          if (p.relu) out = out > 0.0f ? out : F{};
          V::put(y + off, out, n);
        }
      }
    }
  }

  template <class T, int NV>
  static INIK_AI void block(const W* Vb, const W* U, const Plan& p, const float* bias, const T* res, T* y,
                            int64_t b, int64_t ty, int64_t tx0, int nt, int64_t co0, float* M, const Prefetch* pf) {
    gemm<NV>(Vb, U, p, co0, M, pf);
    for (int t = 0; t < nt; ++t) output_tile<T, NV>(M, p, bias, res, y, b, ty, tx0 + t, t, co0);
  }

  // Work items [i0, i1): item = (b, ty, group of kTB tiles); scratch Vb (kA*kTB*Cip), M (kA*kTB*MaxNV*L).
  template <class T>
  static INIK_AI void items(const T* x, const W* U, const float* bias, const T* res, T* y, const Plan& p,
                            int64_t i0, int64_t i1, W* Vb, float* M) {
    const int64_t groups = (p.tw + kTB - 1) / kTB;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t g = it % groups, ty = (it / groups) % p.th, b = it / (groups * p.th);
      const int64_t tx0 = g * kTB;
      const int nt = static_cast<int>(std::min<int64_t>(kTB, p.tw - tx0));
      for (int t = 0; t < nt; ++t) input_tile(x, p, b, ty, tx0 + t, t, Vb, kTB * p.Cip);
      for (int t = nt; t < kTB; ++t)  // unused GEMM rows: zeros, never stored
        for (int q = 0; q < kA; ++q) std::fill_n(Vb + (q * kTB + t) * p.Cip, p.Cip, W(0.0f));
      Prefetch pf;
      if (res)  // this item's residual rows
        for (int64_t r = m * ty; r < std::min<int64_t>(m * ty + m, p.H); ++r)
          pf.add(res + ((b * p.H + r) * p.W + m * tx0) * p.Co, (std::min<int64_t>(m * (tx0 + nt), p.W) - m * tx0) *
                                                                   p.Co * static_cast<int64_t>(sizeof(T)));
      if (it + 1 < i1) {  // the next item's input rows
        const int64_t g1 = (it + 1) % groups, ty1 = ((it + 1) / groups) % p.th, b1 = (it + 1) / (groups * p.th);
        const int64_t c0 = std::max<int64_t>(m * g1 * kTB - 1, 0), c1 = std::min<int64_t>(m * (g1 + 1) * kTB + 1, p.W);
        for (int64_t r = std::max<int64_t>(m * ty1 - 1, 0); r < std::min<int64_t>(m * ty1 + m + 1, p.H); ++r)
          pf.add(x + ((b1 * p.H + r) * p.W + c0) * p.Ci, (c1 - c0) * p.Ci * static_cast<int64_t>(sizeof(T)));
      }
      int64_t co0 = 0;
      for (; co0 + MaxNV * L <= p.Cop; co0 += MaxNV * L)
        block<T, MaxNV>(Vb, U, p, bias, res, y, b, ty, tx0, nt, co0, M, co0 == 0 ? &pf : nullptr);
      const Prefetch* rest = co0 == 0 ? &pf : nullptr;
      switch ((p.Cop - co0) / L) {  // fewer than MaxNV vectors left
        case 3: block<T, 3>(Vb, U, p, bias, res, y, b, ty, tx0, nt, co0, M, rest); break;
        case 2: block<T, 2>(Vb, U, p, bias, res, y, b, ty, tx0, nt, co0, M, rest); break;
        case 1: block<T, 1>(Vb, U, p, bias, res, y, b, ty, tx0, nt, co0, M, rest); break;
        default: break;
      }
    }
  }
};

// One entry point per instruction set, picked at run time (pick_isa): GCC's
// target_clones would compile one body for all, but the vector width and the GEMM's
// register blocking differ - 16 lanes x 4 vectors (24 of the 32 zmm registers) on
// AVX-512, 8 lanes x 2 vectors (12 of the 16 ymm) on AVX2, 4 x 2 otherwise.
// -march=native builds (INIK_NO_CLONES) and other compilers get only the generic one.
#define INIK_WINO_ENTRY(name, attr, L, NV)                                                                     \
  template <int m>                                                                                             \
  attr void name(const float* x, const float* U, const float* bias, const float* res, float* y, const Plan& p, \
                 int64_t i0, int64_t i1, float* Vb, float* M) {                                                \
    Kernel<L, NV, m>::items(x, U, bias, res, y, p, i0, i1, Vb, M);                                             \
  }                                                                                                            \
  template <int m>                                                                                             \
  attr void name(const at::BFloat16* x, const float* U, const float* bias, const at::BFloat16* res,            \
                 at::BFloat16* y, const Plan& p, int64_t i0, int64_t i1, float* Vb, float* M) {                \
    Kernel<L, NV, m>::items(x, U, bias, res, y, p, i0, i1, Vb, M);                                             \
  }

// Each kernel's vector lanes and output vectors per GEMM block.
struct Shape {
  int lanes, nv;
};
constexpr Shape kAvx512Shape{16, 4}, kAvx2Shape{8, 2};
#if defined(__AVX512F__)
constexpr Shape kGenericShape = kAvx512Shape;
#elif defined(__AVX2__)
constexpr Shape kGenericShape = kAvx2Shape;
#else
constexpr Shape kGenericShape{4, 2};
#endif

#define INIK_WGRAD_ENTRY(name, attr, L)                                                                   \
  attr void name(const float* x, const float* g, const Plan& p, int64_t t0, int64_t i0, int64_t i1, int64_t chunk, \
                 float* Vb, float* Yb) {                                                                       \
    Kernel<L, 1, 4>::weight_grad_tiles(x, g, p, t0, i0, i1, chunk, Vb, Yb);                                   \
  }

#ifdef INIK_CPU_ISAS
INIK_WINO_ENTRY(items_avx512, INIK_TARGET_AVX512, kAvx512Shape.lanes, kAvx512Shape.nv)
INIK_WINO_ENTRY(items_avx2, INIK_TARGET_AVX2, kAvx2Shape.lanes, kAvx2Shape.nv)
INIK_WGRAD_ENTRY(weight_grad_tiles_avx512, INIK_TARGET_AVX512, kAvx512Shape.lanes)
INIK_WGRAD_ENTRY(weight_grad_tiles_avx2, INIK_TARGET_AVX2, kAvx2Shape.lanes)
#endif
#if INIK_DOT_BF16
// bfloat16 input on AVX512-BF16: the GEMM in bfloat16 pairs (Kernel::gemm); float32
// input on such a CPU takes items_avx512.
template <int m>
INIK_TARGET_AVX512_BF16 void items_avx512_bf16(
    const at::BFloat16* x, const at::BFloat16* U, const float* bias, const at::BFloat16* res, at::BFloat16* y,
    const Plan& p, int64_t i0, int64_t i1, at::BFloat16* Vb, float* M) {
  Kernel<kAvx512Shape.lanes, kAvx512Shape.nv, m, true>::items(x, U, bias, res, y, p, i0, i1, Vb, M);
}
#endif
INIK_WINO_ENTRY(items_generic, , kGenericShape.lanes, kGenericShape.nv)
INIK_WGRAD_ENTRY(weight_grad_tiles_generic, , kGenericShape.lanes)

}  // namespace wino

// pick_isa (declared in cpu_isa.h).
const char* const kIsaNames[] = {"generic", "avx2", "avx512", "avx512_bf16"};
constexpr int kIsas = 4;

Isa pick_isa(c10::string_view isa) {
  int best = kGeneric;
#ifdef INIK_CPU_ISAS
  __builtin_cpu_init();
#if __GNUC__ >= 12
  const bool v4 = __builtin_cpu_supports("x86-64-v4"), v3 = __builtin_cpu_supports("x86-64-v3");
#else  // GCC 11 knows the features, not the levels
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
  best = v4 ? (INIK_DOT_BF16 && __builtin_cpu_supports("avx512bf16") ? kAvx512Bf16 : kAvx512) : v3 ? kAvx2 : kGeneric;
#endif
  if (isa.empty()) return static_cast<Isa>(best);
  const std::string want(isa);
  for (int i = 0; i < kIsas; ++i)
    if (want == kIsaNames[i]) {
      TORCH_CHECK(i <= best, msg("isa='", want, "' (INIK_CPU_ISA): this CPU (or this build) supports at most ",
                                 kIsaNames[best]));
      return static_cast<Isa>(i);
    }
  TORCH_CHECK(false, msg("isa='", want, "' (INIK_CPU_ISA): expected avx512_bf16, avx512, avx2 or generic"));
  return kGeneric;
}

namespace wino {

Shape shape(Isa isa) { return isa >= kAvx512 ? kAvx512Shape : isa == kAvx2 ? kAvx2Shape : kGenericShape; }

// Whether bfloat16 input runs the bfloat16 GEMM (Kernel::gemm) on this kernel.
bool dot_gemm(Isa isa, at::ScalarType dtype) { return INIK_DOT_BF16 && isa == kAvx512Bf16 && dtype == at::kBFloat16; }

template <int m, class T>
void items(Isa isa, const T* x, const float* U, const float* bias, const T* res, T* y, const Plan& p, int64_t i0,
           int64_t i1, float* Vb, float* M) {
#ifdef INIK_CPU_ISAS
  if (isa >= kAvx512) return items_avx512<m>(x, U, bias, res, y, p, i0, i1, Vb, M);
  if (isa == kAvx2) return items_avx2<m>(x, U, bias, res, y, p, i0, i1, Vb, M);
#endif
  items_generic<m>(x, U, bias, res, y, p, i0, i1, Vb, M);
}

template <int m>
void items(Isa, const at::BFloat16* x, const at::BFloat16* U, const float* bias, const at::BFloat16* res,
           at::BFloat16* y, const Plan& p, int64_t i0, int64_t i1, at::BFloat16* Vb, float* M) {
#if INIK_DOT_BF16
  items_avx512_bf16<m>(x, U, bias, res, y, p, i0, i1, Vb, M);
#else
  TORCH_CHECK(false, "conv3x3_winograd: the bfloat16 GEMM is not in this build");
#endif
}

std::string conv3x3_winograd_isa(c10::string_view isa) { return kIsaNames[pick_isa(isa)]; }

// weight (Co, Ci, 3, 3) -> U[a i + j][ci][co] = (G g G^T)[i][j], computed in double;
// columns Co..Cop are zero. float32 (a*a, Ci, Cop), or for the bfloat16 GEMM (dot)
// bfloat16 (a*a, Ci/2 rounded up, Cop, 2): input channels 2k and 2k+1 side by side,
// a zero for the odd Ci's last. (A plain loop: ATen's small batched matmuls and copies
// cost more than the transform itself over a forward's ~120 calls.)
template <int m>
at::Tensor transform_weight(const at::Tensor& weight, int64_t Cop, bool dot) {
  constexpr int a = Tile<m>::a;
  const auto& G = Tile<m>::G;
  const int64_t Co = weight.size(0), Ci = weight.size(1), pairs = (Ci + 1) / 2;
  // (Ci, 3, 3, Co): every loop below runs over contiguous output channels
  const at::Tensor w = weight.to(at::kDouble).permute({1, 2, 3, 0}).contiguous();
  at::Tensor U = dot ? at::zeros({a * a, pairs, Cop, 2}, at::TensorOptions().dtype(at::kBFloat16))
                     : at::zeros({a * a, Ci, Cop}, at::TensorOptions().dtype(at::kFloat));
  const double* pw = w.const_data_ptr<double>();
  auto fill = [&](auto* pu) {  // U's row (q, ci) starts at pu + row(q, ci), its channels stride apart
    const int64_t stride = dot ? 2 : 1;
    auto row = [&](int64_t q, int64_t ci) {
      return dot ? ((q * pairs + ci / 2) * Cop) * 2 + ci % 2 : (q * Ci + ci) * Cop;
    };
    at::parallel_for(0, Ci, 1, [&](int64_t c0, int64_t c1) {
      std::vector<double> gt(a * 3 * Co);  // (G g)[i][k] for every output channel
      for (int64_t ci = c0; ci < c1; ++ci) {
        const double* g = pw + ci * 9 * Co;
        for (int i = 0; i < a; ++i)
          for (int k = 0; k < 3; ++k) {
            double* o = gt.data() + (i * 3 + k) * Co;
            for (int64_t co = 0; co < Co; ++co)
              o[co] = G[i][0] * g[k * Co + co] + G[i][1] * g[(3 + k) * Co + co] + G[i][2] * g[(6 + k) * Co + co];
          }
        for (int i = 0; i < a; ++i)
          for (int j = 0; j < a; ++j) {
            const double *g0 = gt.data() + i * 3 * Co, *g1 = g0 + Co, *g2 = g1 + Co;
            auto* o = pu + row(i * a + j, ci);
            for (int64_t co = 0; co < Co; ++co)
              o[co * stride] = static_cast<float>(g0[co] * G[j][0] + g1[co] * G[j][1] + g2[co] * G[j][2]);
          }
      }
    });
  };
  if (dot)
    fill(U.data_ptr<at::BFloat16>());
  else
    fill(U.data_ptr<float>());
  return U;
}

// GEMM rows (tiles, padded to whole work items) times Winograd positions: the multiply
// count of F(m x m, 3x3) for an H x W image, up to the channels.
int64_t gemm_cost(int m, int64_t H, int64_t W) {
  const int64_t th = (H + m - 1) / m, tw = (W + m - 1) / m;
  return th * ((tw + kTB - 1) / kTB * kTB) * (m + 2) * (m + 2);
}

// tile = 0: F(6x6, 3x3) for images of at least 128x128 pixels where it needs fewer multiplies, F(4x4, 3x3)
// otherwise: on the model's shapes (bench_conv.py; figures in benchmarks/HISTORY.md)
// F(6x6) is faster from about 160x160 up and slower at 80x80 and below, where its larger
// transformed weights (64 positions, not 36) and partial tiles cost more than its fewer
// multiplies save.
int pick_tile(int64_t tile, int64_t H, int64_t W) {
  if (tile == 0) return H * W >= 128 * 128 && gemm_cost(6, H, W) < gemm_cost(4, H, W) ? 6 : 4;
  TORCH_CHECK(tile == 4 || tile == 6, msg("conv3x3_winograd: tile must be 0 (automatic), 4 or 6, got ", tile));
  return static_cast<int>(tile);
}

int64_t conv3x3_winograd_tile(int64_t H, int64_t W) {
  TORCH_CHECK(H >= 1 && W >= 1, msg("conv3x3_winograd_tile: H and W must be at least 1, got ", H, " x ", W));
  return pick_tile(0, H, W);
}

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// padding_mode: true for "reflect", false for "zeros"; anything else is an error naming op.
bool reflect_padding(const char* op, c10::string_view padding_mode) {
  const bool reflect = padding_mode == "reflect";
  TORCH_CHECK(reflect || padding_mode == "zeros",
              msg(op, ": padding_mode must be 'zeros' or 'reflect', got '", std::string(padding_mode), "'"));
  return reflect;
}

// p's tiles for F(m x m, 3x3) and its channels rounded up to L lanes; reflect padding needs
// H and W of at least 2 (x's sizes in the message).
void tile_plan(const char* op, Plan& p, int m, int L, at::IntArrayRef sizes) {
  TORCH_CHECK(!p.reflect || (p.H >= 2 && p.W >= 2),
              msg(op, ": reflect padding needs H and W of at least 2, got ", sizes));
  p.th = (p.H + m - 1) / m;
  p.tw = (p.W + m - 1) / m;
  p.Cip = (p.Ci + L - 1) / L * L;
  p.Cop = (p.Co + L - 1) / L * L;
}

at::Tensor conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_,
                            const std::optional<at::Tensor>& residual_, c10::string_view padding_mode, bool relu,
                            int64_t tile, bool bf16_gemm, c10::string_view isa_name) {
  const char* op = "conv3x3_winograd";
  TORCH_CHECK(x.dim() == 4, msg(op, ": x must be 4-D (B, C, H, W), got shape ", x.sizes()));
  TORCH_CHECK(x.device().is_cpu(), msg(op, ": x must be a CPU tensor, got ", x.device()));
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              msg(op, ": x must be float32 or bfloat16, got ", x.scalar_type()));
  TORCH_CHECK(x.is_contiguous(kCL), msg(op, ": x must be channels_last-contiguous"));
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 && weight.size(3) == 3,
              msg(op, ": weight must be (Co, ", x.size(1), ", 3, 3) for x with ", x.size(1),
                  " channels, got shape ", weight.sizes()));
  TORCH_CHECK(weight.device().is_cpu() && weight.is_floating_point(),
              msg(op, ": weight must be a floating-point CPU tensor, got ", weight.scalar_type(), " on ",
                  weight.device()));
  const bool reflect = reflect_padding(op, padding_mode);
  const Isa isa = pick_isa(isa_name);
  const Shape sh = shape(isa);
  const int L = sh.lanes;
  Plan p{x.size(0), x.size(1), weight.size(0), x.size(2), x.size(3), 0, 0, 0, 0, reflect, relu};
  const int m = pick_tile(tile, p.H, p.W);
  tile_plan(op, p, m, L, x.sizes());
  at::Tensor bias;
  if (bias_.has_value() && bias_->defined()) {
    TORCH_CHECK(bias_->dim() == 1 && bias_->size(0) == p.Co && bias_->device().is_cpu(),
                msg(op, ": bias must be a CPU tensor of shape (", p.Co, "), got ", bias_->sizes()));
    bias = at::zeros({p.Cop}, at::TensorOptions().dtype(at::kFloat));
    bias.narrow(0, 0, p.Co).copy_(*bias_);
  }
  at::Tensor y = at::empty({p.B, p.Co, p.H, p.W}, x.options().memory_format(kCL));
  at::Tensor res;
  if (residual_.has_value() && residual_->defined()) {
    res = *residual_;
    TORCH_CHECK(res.sizes() == y.sizes() && res.scalar_type() == x.scalar_type() && res.device().is_cpu() &&
                    res.is_contiguous(kCL),
                msg(op, ": residual must be a channels_last-contiguous CPU tensor of shape ", y.sizes(), " and dtype ",
                    x.scalar_type(), ", got ", res.sizes(), ", ", res.scalar_type()));
  }
  if (y.numel() == 0) return y;
  const bool dot = bf16_gemm && dot_gemm(isa, x.scalar_type());
  const at::Tensor U = m == 6 ? transform_weight<6>(weight, p.Cop, dot) : transform_weight<4>(weight, p.Cop, dot);
  const int64_t n_items = p.B * p.th * ((p.tw + kTB - 1) / kTB);
  const float* pb = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  // T: the tensors' dtype; W: V's and U's (bfloat16 for the bfloat16 GEMM, else float)
  auto run = [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using W = decltype(w_tag);
    const T* pr = res.defined() ? res.const_data_ptr<T>() : nullptr;
    at::parallel_for(0, n_items, 1, [&](int64_t i0, int64_t i1) {
      const size_t positions = (m + 2) * (m + 2), vn = positions * kTB * p.Cip, mn = positions * kTB * sh.nv * L;
      // M after V, each at a multiple of 64 bytes (aligned_alloc wants the size one too)
      const size_t vbytes = (vn * sizeof(W) + 63) / 64 * 64, bytes = (vbytes + mn * sizeof(float) + 63) / 64 * 64;
      std::unique_ptr<char, decltype(&std::free)> buf(static_cast<char*>(std::aligned_alloc(64, bytes)), &std::free);
      TORCH_CHECK(buf, msg(op, ": out of memory for scratch buffers"));
      W* Vb = reinterpret_cast<W*>(buf.get());
      float* M = reinterpret_cast<float*>(buf.get() + vbytes);
      const T* px = x.const_data_ptr<T>();
      const W* pu = U.const_data_ptr<W>();
      if (m == 6)
        items<6>(isa, px, pu, pb, pr, y.data_ptr<T>(), p, i0, i1, Vb, M);
      else
        items<4>(isa, px, pu, pb, pr, y.data_ptr<T>(), p, i0, i1, Vb, M);
    });
  };
  if (x.scalar_type() == at::kFloat)
    run(float{}, float{});
  else if (dot)
    run(at::BFloat16{}, at::BFloat16{});
  else
    run(at::BFloat16{}, float{});
  return y;
}

void weight_grad_tiles(Isa isa, const float* x, const float* g, const Plan& p, int64_t t0, int64_t i0, int64_t i1,
                       int64_t chunk, float* Vb, float* Yb) {
#ifdef INIK_CPU_ISAS
  if (isa >= kAvx512) return weight_grad_tiles_avx512(x, g, p, t0, i0, i1, chunk, Vb, Yb);
  if (isa == kAvx2) return weight_grad_tiles_avx2(x, g, p, t0, i0, i1, chunk, Vb, Yb);
#endif
  weight_grad_tiles_generic(x, g, p, t0, i0, i1, chunk, Vb, Yb);
}

at::Tensor conv3x3_winograd_weight_grad(const at::Tensor& x, const at::Tensor& grad, c10::string_view padding_mode,
                                        c10::string_view isa_name, int64_t chunk) {
  const char* op = "conv3x3_winograd_weight_grad";
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"x", x}, {"grad", grad}}) {
    TORCH_CHECK(t.dim() == 4, msg(op, ": ", name, " must be 4-D (B, C, H, W), got shape ", t.sizes()));
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat,
                msg(op, ": ", name, " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device()));
    TORCH_CHECK(t.is_contiguous(kCL), msg(op, ": ", name, " must be channels_last-contiguous"));
  }
  TORCH_CHECK(grad.size(0) == x.size(0) && grad.size(2) == x.size(2) && grad.size(3) == x.size(3),
              msg(op, ": grad must be (", x.size(0), ", Co, ", x.size(2), ", ", x.size(3), ") for x of shape ",
                  x.sizes(), ", got ", grad.sizes()));
  const bool reflect = reflect_padding(op, padding_mode);
  TORCH_CHECK(chunk >= 0, msg(op, ": chunk must be >= 0, got ", chunk));
  constexpr int m = 4, a = m + 2;
  const Isa isa = pick_isa(isa_name);
  Plan p{x.size(0), x.size(1), grad.size(1), x.size(2), x.size(3), 0, 0, 0, 0, reflect, false};
  tile_plan(op, p, m, shape(isa).lanes, x.sizes());
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor gw = at::zeros({a * a, p.Cop, p.Cip}, f32);  // sum over tiles of Y[q]^T V[q]
  const int64_t tiles = p.B * p.th * p.tw;
  if (tiles > 0 && p.Ci > 0 && p.Co > 0) {
    if (chunk == 0) chunk = std::max<int64_t>(1, (int64_t{6} << 20) / (a * a * (p.Cip + p.Cop) * 4));
    chunk = std::min(chunk, tiles);
    at::Tensor Vb = at::empty({a * a, chunk, p.Cip}, f32), Yb = at::empty({a * a, chunk, p.Cop}, f32);
    const float *px = x.const_data_ptr<float>(), *pg = grad.const_data_ptr<float>();
    float *pv = Vb.data_ptr<float>(), *py = Yb.data_ptr<float>();
    for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
      const int64_t n = std::min(chunk, tiles - t0);
      at::parallel_for(0, n, 8, [&](int64_t i0, int64_t i1) {
        weight_grad_tiles(isa, px, pg, p, t0, i0, i1, chunk, pv, py);
      });
      gw.baddbmm_(Yb.narrow(1, 0, n).transpose(1, 2), Vb.narrow(1, 0, n));
    }
  }
  // dW[co][ci][k][l] = sum over positions (i, j) of G[i][k] G[j][l] gw[i a + j][co][ci], in double
  at::Tensor G = at::empty({a, 3}, at::TensorOptions().dtype(at::kDouble));
  std::copy_n(&Tile<m>::G[0][0], a * 3, G.data_ptr<double>());
  const at::Tensor sums = gw.narrow(1, 0, p.Co).narrow(2, 0, p.Ci).to(at::kDouble).view({a, a, p.Co, p.Ci});
  return at::einsum("ik,ijcd,jl->cdkl", {G, sums, G}).to(at::kFloat).contiguous();
}

}  // namespace wino
}  // namespace inik

TORCH_LIBRARY_FRAGMENT(inik, m) {
  m.def(
      "conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, str padding_mode, bool relu, "
      "int tile=0, bool bf16_gemm=True, str isa='') -> Tensor");
  m.def("conv3x3_winograd_weight_grad(Tensor x, Tensor grad, str padding_mode, str isa='', int chunk=0) -> Tensor");
  m.def("conv3x3_winograd_isa(str isa='') -> str", &inik::wino::conv3x3_winograd_isa);
  m.def("conv3x3_winograd_tile(int H, int W) -> int", &inik::wino::conv3x3_winograd_tile);
}

TORCH_LIBRARY_IMPL(inik, CPU, m) {
  m.impl("conv3x3_winograd", &inik::wino::conv3x3_winograd);
  m.impl("conv3x3_winograd_weight_grad", &inik::wino::conv3x3_winograd_weight_grad);
}
