// Fused pointwise part of a ConvLSTM cell on the CPU:
//   inik::lstm_cell_forward(gates, c) -> (h, c_new)
//   inik::lstm_cell_backward(gates, c, grad_h?, grad_c_new?) -> (grad_gates, grad_c)
// gates: (B, 4h, H, W) pre-activations in the order i, f, o, g; c: (B, h, H, W).
//   c_new = sigmoid(f) * c + sigmoid(i) * tanh(g),   h = sigmoid(o) * tanh(c_new).
// Both tensors must be channels_last-contiguous (every pixel's 4h gate values then
// lie together) and of one dtype: float32 and bfloat16 are computed in float32
// with a vectorised exp (relative error ~1e-7, the output's absolute error below
// 3e-7), float64 in double with the C library (for gradcheck). Outputs are
// channels_last in the inputs' dtype.
//
// Why: in a channels_last network the four gates are channel slices of one
// tensor, so PyTorch's elementwise ops on them run on strided views - scalar
// loops, several times slower than on contiguous data in bfloat16 - and each of the
// cell's ten ops reads and writes full-size tensors. One pass here reads the
// gates and c once and writes h and c_new once. The backward recomputes the
// activations from (gates, c), so training saves two tensors per cell instead
// of PyTorch's seven.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "cpu_simd.h"
#include "ifm_host.h"


namespace inik {
namespace lstm {

using namespace inik::simd;

// exp(x) for float lanes: Cephes' expf (range reduction by ln 2, degree-6 polynomial),
// inputs clamped to the normal range. L lanes: the instruction set's native width.
template <int L>
INIK_AI typename Vec<L>::f vexp(typename Vec<L>::f x) {
  using V = typename Vec<L>::f;
  using I = typename Vec<L>::i;
  const V lo = V{} - 87.3f, hi = V{} + 88.3f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V t = x * 1.44269504088896341f;
  const I n = to_int(t + (t >= 0.0f ? V{} + 0.5f : V{} - 0.5f));
  const V nf = to_float(n);
  const V r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const I bits = (n + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return p * scale;
}

template <int L> INIK_AI typename Vec<L>::f vsigmoid(typename Vec<L>::f x) { return 1.0f / (1.0f + vexp<L>(-x)); }
template <int L> INIK_AI typename Vec<L>::f vtanh(typename Vec<L>::f x) {
  return 2.0f / (1.0f + vexp<L>(-2.0f * x)) - 1.0f;
}

// The activated gates i, f, o (sigmoid) and g (tanh) of n <= L channels from gp, the
// pixel's gate row at the first channel (the four gates hid apart).
template <int L> struct Gates {
  typename Vec<L>::f i, f, o, g;
  template <class T>
  INIK_AI Gates(const T* gp, int64_t hid, int64_t n)
      : i(vsigmoid<L>(Vec<L>::get(gp, n))),
        f(vsigmoid<L>(Vec<L>::get(gp + hid, n))),
        o(vsigmoid<L>(Vec<L>::get(gp + 2 * hid, n))),
        g(vtanh<L>(Vec<L>::get(gp + 3 * hid, n))) {}
};

// Pixels [p0, p1): gates (P, 4, hid), c (P, hid).
template <int L, class T>
INIK_AI void forward_float_t(const T* gates, const T* c, T* h_out, T* c_out, int64_t hid, int64_t p0,
                             int64_t p1) {
  using V = typename Vec<L>::f;
  using Ln = Vec<L>;
  for (int64_t p = p0; p < p1; ++p) {
    const T* g = gates + p * 4 * hid;
    for (int64_t j = 0; j < hid; j += L) {
      const int64_t n = hid - j < L ? hid - j : L;
      const Gates<L> a(g + j, hid, n);
      const V i = a.i, f = a.f, o = a.o, gg = a.g;
      const V cn = f * Ln::get(c + p * hid + j, n) + i * gg;
      Ln::put(c_out + p * hid + j, cn, n);
      Ln::put(h_out + p * hid + j, o * vtanh<L>(cn), n);
    }
  }
}

template <int L, class T>
INIK_AI void backward_float_t(const T* gates, const T* c, const T* dh, const T* dc, T* dgates, T* dcp,
                              int64_t hid, int64_t p0, int64_t p1) {
  using V = typename Vec<L>::f;
  using Ln = Vec<L>;
  for (int64_t p = p0; p < p1; ++p) {
    const T* g = gates + p * 4 * hid;
    T* dg = dgates + p * 4 * hid;
    for (int64_t j = 0; j < hid; j += L) {
      const int64_t n = hid - j < L ? hid - j : L;
      const Gates<L> a(g + j, hid, n);
      const V i = a.i, f = a.f, o = a.o, gg = a.g;
      const V cp = Ln::get(c + p * hid + j, n);
      const V tc = vtanh<L>(f * cp + i * gg);
      const V gh = dh ? Ln::get(dh + p * hid + j, n) : V{};
      const V dcn = (dc ? Ln::get(dc + p * hid + j, n) : V{}) + gh * o * (1.0f - tc * tc);
      Ln::put(dg + j, dcn * gg * i * (1.0f - i), n);
      Ln::put(dg + hid + j, dcn * cp * f * (1.0f - f), n);
      Ln::put(dg + 2 * hid + j, gh * tc * o * (1.0f - o), n);
      Ln::put(dg + 3 * hid + j, dcn * i * (1.0f - gg * gg), n);
      Ln::put(dcp + p * hid + j, dcn * f, n);
    }
  }
}

// Pixels [p0, p1) of float and bfloat16 storage: one entry point per instruction set,
// picked at run time (pick_isa); float64 (gradcheck) in plain double with the C library.
#define INIK_LSTM_ENTRIES(SUFFIX, TARGET, L, T)                                                            \
  TARGET void forward_##SUFFIX(const T* gates, const T* c, T* h_out, T* c_out, int64_t hid, int64_t p0,    \
                               int64_t p1) {                                                               \
    forward_float_t<L>(gates, c, h_out, c_out, hid, p0, p1);                                               \
  }                                                                                                        \
  TARGET void backward_##SUFFIX(const T* gates, const T* c, const T* dh, const T* dc, T* dgates, T* dcp,   \
                                int64_t hid, int64_t p0, int64_t p1) {                                     \
    backward_float_t<L>(gates, c, dh, dc, dgates, dcp, hid, p0, p1);                                       \
  }
#ifdef INIK_CPU_ISAS
INIK_LSTM_ENTRIES(avx512, INIK_TARGET_AVX512, 16, float)
INIK_LSTM_ENTRIES(avx512, INIK_TARGET_AVX512, 16, at::BFloat16)
INIK_LSTM_ENTRIES(avx2, INIK_TARGET_AVX2, 8, float)
INIK_LSTM_ENTRIES(avx2, INIK_TARGET_AVX2, 8, at::BFloat16)
#endif
// the build's own width (wider under -march=native)
#if defined(__AVX512F__)
#define INIK_GENERIC_LANES 16
#elif defined(__AVX__)
#define INIK_GENERIC_LANES 8
#else
#define INIK_GENERIC_LANES 4
#endif
INIK_LSTM_ENTRIES(generic, , INIK_GENERIC_LANES, float)
INIK_LSTM_ENTRIES(generic, , INIK_GENERIC_LANES, at::BFloat16)

template <class T>
void forward_pixels(Isa isa, const T* gates, const T* c, T* h_out, T* c_out, int64_t hid, int64_t p0,
                    int64_t p1) {
#ifdef INIK_CPU_ISAS
  if (isa >= kAvx512) return forward_avx512(gates, c, h_out, c_out, hid, p0, p1);
  if (isa == kAvx2) return forward_avx2(gates, c, h_out, c_out, hid, p0, p1);
#endif
  forward_generic(gates, c, h_out, c_out, hid, p0, p1);
}

template <class T>
void backward_pixels(Isa isa, const T* gates, const T* c, const T* dh, const T* dc, T* dgates, T* dcp,
                     int64_t hid, int64_t p0, int64_t p1) {
#ifdef INIK_CPU_ISAS
  if (isa >= kAvx512) return backward_avx512(gates, c, dh, dc, dgates, dcp, hid, p0, p1);
  if (isa == kAvx2) return backward_avx2(gates, c, dh, dc, dgates, dcp, hid, p0, p1);
#endif
  backward_generic(gates, c, dh, dc, dgates, dcp, hid, p0, p1);
}

inline double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

void forward_pixels(Isa, const double* gates, const double* c, double* h_out, double* c_out, int64_t hid,
                    int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const double* g = gates + p * 4 * hid;
    for (int64_t j = 0; j < hid; ++j) {
      const double cn = sig(g[hid + j]) * c[p * hid + j] + sig(g[j]) * std::tanh(g[3 * hid + j]);
      c_out[p * hid + j] = cn;
      h_out[p * hid + j] = sig(g[2 * hid + j]) * std::tanh(cn);
    }
  }
}

void backward_pixels(Isa, const double* gates, const double* c, const double* dh, const double* dc,
                     double* dgates, double* dcp, int64_t hid, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const double* g = gates + p * 4 * hid;
    double* dg = dgates + p * 4 * hid;
    for (int64_t j = 0; j < hid; ++j) {
      const double i = sig(g[j]), f = sig(g[hid + j]), o = sig(g[2 * hid + j]), gg = std::tanh(g[3 * hid + j]);
      const double cp = c[p * hid + j];
      const double tc = std::tanh(f * cp + i * gg);
      const double gh = dh ? dh[p * hid + j] : 0.0;
      const double dcn = (dc ? dc[p * hid + j] : 0.0) + gh * o * (1.0 - tc * tc);
      dg[j] = dcn * gg * i * (1.0 - i);
      dg[hid + j] = dcn * cp * f * (1.0 - f);
      dg[2 * hid + j] = gh * tc * o * (1.0 - o);
      dg[3 * hid + j] = dcn * i * (1.0 - gg * gg);
      dcp[p * hid + j] = dcn * f;
    }
  }
}

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

void check_pair(const char* op, const at::Tensor& gates, const at::Tensor& c) {
  TORCH_CHECK(gates.dim() == 4 && c.dim() == 4,
              msg(op, ": gates and c must be 4-D (B, 4h, H, W) and (B, h, H, W), got ", gates.sizes(), " and ",
                  c.sizes()));
  TORCH_CHECK(gates.size(0) == c.size(0) && gates.size(1) == 4 * c.size(1) && gates.size(2) == c.size(2) &&
                  gates.size(3) == c.size(3),
              msg(op, ": gates must be (B, 4h, H, W) for c of shape (B, h, H, W), got gates ", gates.sizes(),
                  " and c ", c.sizes()));
  TORCH_CHECK(gates.device().is_cpu() && c.device().is_cpu(),
              msg(op, ": gates and c must be CPU tensors, got ", gates.device(), " and ", c.device()));
  TORCH_CHECK(gates.scalar_type() == c.scalar_type(),
              msg(op, ": gates and c must have one dtype, got ", gates.scalar_type(), " and ", c.scalar_type()));
  const auto st = gates.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kDouble,
              msg(op, ": gates must be float32, bfloat16 or float64, got ", st));
  TORCH_CHECK(gates.is_contiguous(kCL) && c.is_contiguous(kCL),
              msg(op, ": gates and c must be channels_last-contiguous"));
}

void check_grad(const char* op, const char* name, const at::Tensor& g, const at::Tensor& c) {
  if (!g.defined()) return;
  TORCH_CHECK(g.sizes() == c.sizes() && g.scalar_type() == c.scalar_type() && g.device() == c.device() &&
                  g.is_contiguous(kCL),
              msg(op, ": ", name, " must be a channels_last-contiguous tensor like c (", c.sizes(), ", ",
                  c.scalar_type(), "), got ", g.sizes(), ", ", g.scalar_type()));
}

int64_t grain(int64_t hid) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(hid, 1)); }

std::tuple<at::Tensor, at::Tensor> lstm_cell_forward(const at::Tensor& gates, const at::Tensor& c,
                                                     c10::string_view isa_name) {
  check_pair("lstm_cell_forward", gates, c);
  const Isa isa = pick_isa(isa_name);
  at::Tensor h = at::empty_like(c, c.options().memory_format(kCL));
  at::Tensor cn = at::empty_like(c, c.options().memory_format(kCL));
  const int64_t hid = c.size(1), P = c.numel() / std::max<int64_t>(hid, 1);
  if (c.numel() == 0) return {h, cn};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "lstm_cell_forward", [&] {
    at::parallel_for(0, P, grain(hid), [&](int64_t p0, int64_t p1) {
      forward_pixels(isa, gates.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                     cn.data_ptr<scalar_t>(), hid, p0, p1);
    });
  });
  return {h, cn};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward(const at::Tensor& gates, const at::Tensor& c,
                                                      const std::optional<at::Tensor>& grad_h,
                                                      const std::optional<at::Tensor>& grad_c,
                                                      c10::string_view isa_name) {
  const char* op = "lstm_cell_backward";
  const Isa isa = pick_isa(isa_name);
  check_pair(op, gates, c);
  const at::Tensor dh = grad_h.has_value() ? *grad_h : at::Tensor();
  const at::Tensor dc = grad_c.has_value() ? *grad_c : at::Tensor();
  check_grad(op, "grad_h", dh, c);
  check_grad(op, "grad_c", dc, c);
  at::Tensor dgates = at::empty_like(gates, gates.options().memory_format(kCL));
  at::Tensor dcp = at::empty_like(c, c.options().memory_format(kCL));
  const int64_t hid = c.size(1), P = c.numel() / std::max<int64_t>(hid, 1);
  if (c.numel() == 0) return {dgates, dcp};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "lstm_cell_backward", [&] {
    const scalar_t* pdh = dh.defined() ? dh.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pdc = dc.defined() ? dc.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, P, grain(hid), [&](int64_t p0, int64_t p1) {
      backward_pixels(isa, gates.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), pdh, pdc,
                      dgates.data_ptr<scalar_t>(), dcp.data_ptr<scalar_t>(), hid, p0, p1);
    });
  });
  return {dgates, dcp};
}

}  // namespace lstm
}  // namespace inik

TORCH_LIBRARY_FRAGMENT(inik, m) {
  // isa: the kernel's instruction set ("": the best the CPU has)
  m.def("lstm_cell_forward(Tensor gates, Tensor c, str isa='') -> (Tensor, Tensor)");
  m.def("lstm_cell_backward(Tensor gates, Tensor c, Tensor? grad_h, Tensor? grad_c, str isa='') -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(inik, CPU, m) {
  m.impl("lstm_cell_forward", &inik::lstm::lstm_cell_forward);
  m.impl("lstm_cell_backward", &inik::lstm::lstm_cell_backward);
}
