// 3x3 stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3), for CPU
// inference in channels_last layout:
//
//   inik::conv3x3_winograd(x, weight, bias?, residual?, padding_mode, relu) -> y
//   y = conv2d(pad1(x, padding_mode), weight) + bias [+ residual], then max(., 0) if relu
//
// x: (B, Ci, H, W) channels_last-contiguous, float32 or bfloat16; weight (Co, Ci, 3, 3)
// (any layout, any float dtype); bias (Co); residual like y. y is channels_last in
// x's dtype. Everything is computed in float32. padding_mode "zeros" or "reflect".
//
// Why: the network's time on a CPU is in its 3x3 convolutions (64 channels at full
// resolution), which oneDNN runs near the cores' fp32 FMA peak. F(4x4, 3x3) needs
// 36 multiply-adds per input channel for 16 outputs instead of 144, plus input and
// output transforms (about 40% of the time at 640x640, mostly streaming the input
// and output through memory, which the kernel prefetches). Its rounding error is larger
// than a direct convolution's (5-15x in float32, about 3e-6 relative), which is
// why the model uses it only at inference (inik.ops.winograd).
//
// Each work item is kTB = 6 adjacent 4x4 output tiles of one tile row. Per item:
// (1) the 6x6 input tiles, padding applied by index, go to the Winograd domain
// (V = B^T d B, one vector of channels at a time); (2) for each of the 36 positions
// a GEMM (6 tiles x Ci) @ (Ci x Co), a block of output channels at a time in
// registers - 6 x 64 in 24 zmm on AVX-512, 6 x 16 in 12 ymm on AVX2; (3) the output
// transform A^T M A, bias, residual and ReLU, stored. V and M stay in L1/L2. The
// kernel for the CPU's instruction set is picked at run time (INIK_CPU_ISA can ask
// for a lesser one, for tests and timings).
//
//   inik::conv3x3_winograd_isa() -> str: the kernel that calls run now ("avx512", "avx2", "generic").

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "cpu_lanes.h"
#include "cpu_simd.h"
#include "ifm_host.h"

namespace inik {
namespace wino {

using simd::Vec;

constexpr int kTB = 6;  // tiles per work item (the GEMM's rows)
constexpr int kA = 36;  // positions of the 6x6 Winograd domain

struct Plan {
  int64_t B, Ci, Co, H, W, th, tw, Cip, Cop;  // Cip, Cop: channels rounded up to the kernel's lanes
  bool reflect, relu;
};

// d0..d5 -> B^T d (one column of the 6x6 tile, every lane a channel).
template <class F>
INIK_AI void bt6(F d0, F d1, F d2, F d3, F d4, F d5, F* o) {
  o[0] = 4.0f * d0 - 5.0f * d2 + d4;
  o[1] = -4.0f * (d1 + d2) + d3 + d4;
  o[2] = 4.0f * (d1 - d2) - d3 + d4;
  o[3] = 2.0f * (d3 - d1) - d2 + d4;
  o[4] = 2.0f * (d1 - d3) - d2 + d4;
  o[5] = 4.0f * d1 - 5.0f * d3 + d5;
}

// m0..m5 -> A^T m (4 outputs).
template <class F>
INIK_AI void at6(F m0, F m1, F m2, F m3, F m4, F m5, F* o) {
  const F s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
  o[0] = m0 + s12 + s34;
  o[1] = d12 + 2.0f * d34;
  o[2] = s12 + 4.0f * s34;
  o[3] = d12 + 8.0f * d34 + m5;
}

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
  const char* ptr[10];
  int64_t bytes[10];
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

// The kernel for vectors of L floats, with MaxNV output vectors per GEMM block.
template <int L, int MaxNV>
struct Kernel {
  using V = Vec<L>;
  using F = typename V::f;

  // (1) Tile t of the item: V[a][t][:] for the 6x6 input tile at output origin (4 ty, 4 tx).
  template <class T>
  static INIK_AI void input_tile(const T* x, const Plan& p, int64_t b, int64_t ty, int64_t tx, int t, float* Vb) {
    int64_t rows[6], cols[6];
    bool rv[6], cv[6];
    for (int i = 0; i < 6; ++i) {
      rows[i] = source_index(4 * ty - 1 + i, p.H, p.reflect, &rv[i]);
      cols[i] = source_index(4 * tx - 1 + i, p.W, p.reflect, &cv[i]);
    }
    for (int64_t c = 0; c < p.Cip; c += L) {
      const int64_t n = std::min<int64_t>(L, p.Ci - c);
      F d[6][6], u[6][6];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j)
          d[i][j] = rv[i] && cv[j] ? V::get(x + ((b * p.H + rows[i]) * p.W + cols[j]) * p.Ci + c, n) : F{};
      for (int j = 0; j < 6; ++j) {
        F o[6];
        bt6(d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j], o);
        for (int i = 0; i < 6; ++i) u[i][j] = o[i];
      }
      for (int i = 0; i < 6; ++i) {
        F o[6];
        bt6(u[i][0], u[i][1], u[i][2], u[i][3], u[i][4], u[i][5], o);
        for (int j = 0; j < 6; ++j) V::store(Vb + ((i * 6 + j) * kTB + t) * p.Cip + c, o[j]);
      }
    }
  }

  // (2) M[a][t][0 : NV*L] = V[a][t][:Ci] @ U[a][:Ci][co0 : co0 + NV*L] for all 36 a.
  template <int NV>
  static INIK_AI void gemm(const float* Vb, const float* U, const Plan& p, int64_t co0, float* M,
                           const Prefetch* pf) {
    for (int a = 0; a < kA; ++a) {
      if (pf) pf->fetch(a, kA);
      F acc[kTB][NV];
      for (int t = 0; t < kTB; ++t)
        for (int v = 0; v < NV; ++v) acc[t][v] = F{};
      const float* va = Vb + a * kTB * p.Cip;
      const float* ua = U + a * p.Ci * p.Cop + co0;
      for (int64_t ci = 0; ci < p.Ci; ++ci) {
        F w[NV];
        for (int v = 0; v < NV; ++v) w[v] = V::load(ua + ci * p.Cop + v * L);
        for (int t = 0; t < kTB; ++t) {
          const F s = va[t * p.Cip + ci] - F{};  // a broadcast (x - 0 == x, unlike 0 + x for x = -0)
          for (int v = 0; v < NV; ++v) acc[t][v] += s * w[v];
        }
      }
      for (int t = 0; t < kTB; ++t)
        for (int v = 0; v < NV; ++v) V::store(M + ((t * NV + v) * kA + a) * L, acc[t][v]);
    }
  }

  // (3) Output tile t, channels [co0, co0 + NV*L): A^T M A, bias, residual, ReLU, stored.
  template <class T, int NV>
  static INIK_AI void output_tile(const float* M, const Plan& p, const float* bias, const T* res, T* y, int64_t b,
                                  int64_t ty, int64_t tx, int t, int64_t co0) {
    const int64_t oy0 = 4 * ty, ox0 = 4 * tx;
    for (int v = 0; v < NV; ++v) {
      const int64_t c = co0 + v * L;
      if (c >= p.Co) break;
      const int64_t n = std::min<int64_t>(L, p.Co - c);
      F m[6][6], u[4][6];
      for (int a = 0; a < kA; ++a) m[a / 6][a % 6] = V::load(M + ((t * NV + v) * kA + a) * L);
      for (int j = 0; j < 6; ++j) {
        F o[4];
        at6(m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j], o);
        for (int r = 0; r < 4; ++r) u[r][j] = o[r];
      }
      const F bv = bias ? V::load(bias + c) : F{};
      for (int r = 0; r < 4 && oy0 + r < p.H; ++r) {
        F o[4];
        at6(u[r][0], u[r][1], u[r][2], u[r][3], u[r][4], u[r][5], o);
        for (int s = 0; s < 4 && ox0 + s < p.W; ++s) {
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
  static INIK_AI void block(const float* Vb, const float* U, const Plan& p, const float* bias, const T* res, T* y,
                            int64_t b, int64_t ty, int64_t tx0, int nt, int64_t co0, float* M, const Prefetch* pf) {
    gemm<NV>(Vb, U, p, co0, M, pf);
    for (int t = 0; t < nt; ++t) output_tile<T, NV>(M, p, bias, res, y, b, ty, tx0 + t, t, co0);
  }

  // Work items [i0, i1): item = (b, ty, group of kTB tiles); scratch Vb (36*kTB*Cip), M (36*kTB*MaxNV*L).
  template <class T>
  static INIK_AI void items(const T* x, const float* U, const float* bias, const T* res, T* y, const Plan& p,
                            int64_t i0, int64_t i1, float* Vb, float* M) {
    const int64_t groups = (p.tw + kTB - 1) / kTB;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t g = it % groups, ty = (it / groups) % p.th, b = it / (groups * p.th);
      const int64_t tx0 = g * kTB;
      const int nt = static_cast<int>(std::min<int64_t>(kTB, p.tw - tx0));
      for (int t = 0; t < nt; ++t) input_tile(x, p, b, ty, tx0 + t, t, Vb);
      for (int t = nt; t < kTB; ++t)  // unused GEMM rows: zeros, never stored
        for (int a = 0; a < kA; ++a) std::fill_n(Vb + (a * kTB + t) * p.Cip, p.Cip, 0.0f);
      Prefetch pf;
      if (res)  // this item's residual rows
        for (int64_t r = 4 * ty; r < std::min<int64_t>(4 * ty + 4, p.H); ++r)
          pf.add(res + ((b * p.H + r) * p.W + 4 * tx0) * p.Co, (std::min<int64_t>(4 * (tx0 + nt), p.W) - 4 * tx0) *
                                                                   p.Co * static_cast<int64_t>(sizeof(T)));
      if (it + 1 < i1) {  // the next item's input rows
        const int64_t g1 = (it + 1) % groups, ty1 = ((it + 1) / groups) % p.th, b1 = (it + 1) / (groups * p.th);
        const int64_t c0 = std::max<int64_t>(4 * g1 * kTB - 1, 0), c1 = std::min<int64_t>(4 * (g1 + 1) * kTB + 1, p.W);
        for (int64_t r = std::max<int64_t>(4 * ty1 - 1, 0); r < std::min<int64_t>(4 * ty1 + 5, p.H); ++r)
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
  attr void name(const float* x, const float* U, const float* bias, const float* res, float* y, const Plan& p, \
                 int64_t i0, int64_t i1, float* Vb, float* M) {                                                \
    Kernel<L, NV>::items(x, U, bias, res, y, p, i0, i1, Vb, M);                                                \
  }                                                                                                            \
  attr void name(const at::BFloat16* x, const float* U, const float* bias, const at::BFloat16* res,            \
                 at::BFloat16* y, const Plan& p, int64_t i0, int64_t i1, float* Vb, float* M) {                \
    Kernel<L, NV>::items(x, U, bias, res, y, p, i0, i1, Vb, M);                                                \
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

#if defined(__x86_64__) && defined(__linux__) && !defined(__clang__) && __GNUC__ >= 12 && !defined(INIK_NO_CLONES)
#define INIK_WINO_ISAS 1
INIK_WINO_ENTRY(items_avx512, __attribute__((target("arch=x86-64-v4"))), kAvx512Shape.lanes, kAvx512Shape.nv)
INIK_WINO_ENTRY(items_avx2, __attribute__((target("arch=x86-64-v3"))), kAvx2Shape.lanes, kAvx2Shape.nv)
#endif
INIK_WINO_ENTRY(items_generic, , kGenericShape.lanes, kGenericShape.nv)

// The entry point for this CPU: the best it supports, or INIK_CPU_ISA (avx512, avx2,
// generic) to test or time a lesser one; asking for more than the CPU has is an error.
enum Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

Isa pick_isa() {
  int best = kGeneric;
#ifdef INIK_WINO_ISAS
  __builtin_cpu_init();
  best = __builtin_cpu_supports("x86-64-v4") ? kAvx512 : __builtin_cpu_supports("x86-64-v3") ? kAvx2 : kGeneric;
#endif
  const char* env = std::getenv("INIK_CPU_ISA");
  if (env == nullptr || *env == 0) return static_cast<Isa>(best);
  const std::string want(env);
  for (int i = 0; i < 3; ++i)
    if (want == kIsaNames[i]) {
      TORCH_CHECK(i <= best, msg("INIK_CPU_ISA=", want, ": this CPU (or this build) supports at most ",
                                 kIsaNames[best]));
      return static_cast<Isa>(i);
    }
  TORCH_CHECK(false, msg("INIK_CPU_ISA must be avx512, avx2 or generic, got '", want, "'"));
  return kGeneric;
}

Shape shape(Isa isa) { return isa == kAvx512 ? kAvx512Shape : isa == kAvx2 ? kAvx2Shape : kGenericShape; }

template <class T>
void items(Isa isa, const T* x, const float* U, const float* bias, const T* res, T* y, const Plan& p, int64_t i0,
           int64_t i1, float* Vb, float* M) {
#ifdef INIK_WINO_ISAS
  if (isa == kAvx512) return items_avx512(x, U, bias, res, y, p, i0, i1, Vb, M);
  if (isa == kAvx2) return items_avx2(x, U, bias, res, y, p, i0, i1, Vb, M);
#endif
  items_generic(x, U, bias, res, y, p, i0, i1, Vb, M);
}

std::string conv3x3_winograd_isa() { return kIsaNames[pick_isa()]; }

// weight (Co, Ci, 3, 3) -> U (36, Ci, Cop) float32: U[6i+j][ci][co] = (G g G^T)[i][j],
// computed in double; columns Co..Cop are zero. (A plain loop: ATen's small batched
// matmuls and copies took about 100 ms per 640x640 forward, over its ~120 calls.)
at::Tensor transform_weight(const at::Tensor& weight, int64_t Cop) {
  static const double G[6][3] = {{0.25, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                 {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  const int64_t Co = weight.size(0), Ci = weight.size(1);
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  at::Tensor U = at::zeros({kA, Ci, Cop}, at::TensorOptions().dtype(at::kFloat));
  const double* pw = w.const_data_ptr<double>();
  float* pu = U.data_ptr<float>();
  at::parallel_for(0, Co * Ci, 256, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      const double* g = pw + f * 9;
      double gt[6][3];  // G g
      for (int i = 0; i < 6; ++i)
        for (int k = 0; k < 3; ++k) gt[i][k] = G[i][0] * g[k] + G[i][1] * g[3 + k] + G[i][2] * g[6 + k];
      const int64_t co = f / Ci, ci = f % Ci;
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j)
          pu[((i * 6 + j) * Ci + ci) * Cop + co] =
              static_cast<float>(gt[i][0] * G[j][0] + gt[i][1] * G[j][1] + gt[i][2] * G[j][2]);
    }
  });
  return U;
}

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

at::Tensor conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_,
                            const std::optional<at::Tensor>& residual_, c10::string_view padding_mode, bool relu) {
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
  const bool reflect = padding_mode == "reflect";
  TORCH_CHECK(reflect || padding_mode == "zeros",
              msg(op, ": padding_mode must be 'zeros' or 'reflect', got '", std::string(padding_mode), "'"));
  const Isa isa = pick_isa();
  const Shape sh = shape(isa);
  const int L = sh.lanes;
  Plan p{x.size(0), x.size(1), weight.size(0), x.size(2), x.size(3), 0, 0, 0, 0, reflect, relu};
  TORCH_CHECK(!reflect || (p.H >= 2 && p.W >= 2),
              msg(op, ": reflect padding needs H and W of at least 2, got ", x.sizes()));
  p.th = (p.H + 3) / 4;
  p.tw = (p.W + 3) / 4;
  p.Cip = (p.Ci + L - 1) / L * L;
  p.Cop = (p.Co + L - 1) / L * L;
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
  const at::Tensor U = transform_weight(weight, p.Cop);
  const int64_t n_items = p.B * p.th * ((p.tw + kTB - 1) / kTB);
  const float* pb = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* pr = res.defined() ? res.const_data_ptr<T>() : nullptr;
    at::parallel_for(0, n_items, 1, [&](int64_t i0, int64_t i1) {
      const size_t vn = kA * kTB * p.Cip, mn = kA * kTB * sh.nv * L;
      const size_t bytes = ((vn + mn) * sizeof(float) + 63) / 64 * 64;  // aligned_alloc wants a multiple
      std::unique_ptr<float, decltype(&std::free)> buf(
          static_cast<float*>(std::aligned_alloc(64, bytes)), &std::free);
      TORCH_CHECK(buf, msg(op, ": out of memory for scratch buffers"));
      items(isa, x.const_data_ptr<T>(), U.const_data_ptr<float>(), pb, pr, y.data_ptr<T>(), p, i0, i1, buf.get(),
            buf.get() + vn);
    });
  };
  if (x.scalar_type() == at::kFloat)
    run(float{});
  else
    run(at::BFloat16{});
  return y;
}

}  // namespace wino
}  // namespace inik

TORCH_LIBRARY_FRAGMENT(inik, m) {
  m.def(
      "conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, str padding_mode, bool relu) "
      "-> Tensor");
  m.def("conv3x3_winograd_isa() -> str", &inik::wino::conv3x3_winograd_isa);
}

TORCH_LIBRARY_IMPL(inik, CPU, m) { m.impl("conv3x3_winograd", &inik::wino::conv3x3_winograd); }
