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
// inputs clamped to the normal range.
INIK_AI vf vexp(vf x) {
  const vf lo = vf{} - 87.3f, hi = vf{} + 88.3f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf t = x * 1.44269504088896341f;
  const vi n = __builtin_convertvector(t + (t >= 0.0f ? vf{} + 0.5f : vf{} - 0.5f), vi);
  const vf nf = __builtin_convertvector(n, vf);
  const vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf p = vf{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi bits = (n + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(vf));
  return p * scale;
}

INIK_AI vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }
INIK_AI vf vtanh(vf x) { return 2.0f / (1.0f + vexp(-2.0f * x)) - 1.0f; }

// Pixels [p0, p1): gates (P, 4, hid), c (P, hid).
template <class T>
INIK_AI void forward_float_t(const T* gates, const T* c, T* h_out, T* c_out, int64_t hid, int64_t p0,
                                    int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const T* g = gates + p * 4 * hid;
    for (int64_t j = 0; j < hid; j += kLanes) {
      const int64_t n = hid - j < kLanes ? hid - j : kLanes;
      const vf i = vsigmoid(Lanes<T>::get(g + j, n));
      const vf f = vsigmoid(Lanes<T>::get(g + hid + j, n));
      const vf o = vsigmoid(Lanes<T>::get(g + 2 * hid + j, n));
      const vf gg = vtanh(Lanes<T>::get(g + 3 * hid + j, n));
      const vf cn = f * Lanes<T>::get(c + p * hid + j, n) + i * gg;
      Lanes<T>::put(c_out + p * hid + j, cn, n);
      Lanes<T>::put(h_out + p * hid + j, o * vtanh(cn), n);
    }
  }
}

template <class T>
INIK_AI void backward_float_t(const T* gates, const T* c, const T* dh, const T* dc, T* dgates, T* dcp,
                                     int64_t hid, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const T* g = gates + p * 4 * hid;
    T* dg = dgates + p * 4 * hid;
    for (int64_t j = 0; j < hid; j += kLanes) {
      const int64_t n = hid - j < kLanes ? hid - j : kLanes;
      const vf i = vsigmoid(Lanes<T>::get(g + j, n));
      const vf f = vsigmoid(Lanes<T>::get(g + hid + j, n));
      const vf o = vsigmoid(Lanes<T>::get(g + 2 * hid + j, n));
      const vf gg = vtanh(Lanes<T>::get(g + 3 * hid + j, n));
      const vf cp = Lanes<T>::get(c + p * hid + j, n);
      const vf tc = vtanh(f * cp + i * gg);
      const vf gh = dh ? Lanes<T>::get(dh + p * hid + j, n) : vf{};
      const vf dcn = (dc ? Lanes<T>::get(dc + p * hid + j, n) : vf{}) + gh * o * (1.0f - tc * tc);
      Lanes<T>::put(dg + j, dcn * gg * i * (1.0f - i), n);
      Lanes<T>::put(dg + hid + j, dcn * cp * f * (1.0f - f), n);
      Lanes<T>::put(dg + 2 * hid + j, gh * tc * o * (1.0f - o), n);
      Lanes<T>::put(dg + 3 * hid + j, dcn * i * (1.0f - gg * gg), n);
      Lanes<T>::put(dcp + p * hid + j, dcn * f, n);
    }
  }
}

// Pixels [p0, p1) of float and bfloat16 storage: one entry point per instruction set,
// picked at run time (pick_isa); float64 (gradcheck) in plain double with the C library.
#define INIK_LSTM_ENTRIES(SUFFIX, TARGET, T)                                                               \
  TARGET void forward_##SUFFIX(const T* gates, const T* c, T* h_out, T* c_out, int64_t hid, int64_t p0,    \
                               int64_t p1) {                                                               \
    forward_float_t(gates, c, h_out, c_out, hid, p0, p1);                                                  \
  }                                                                                                        \
  TARGET void backward_##SUFFIX(const T* gates, const T* c, const T* dh, const T* dc, T* dgates, T* dcp,   \
                                int64_t hid, int64_t p0, int64_t p1) {                                     \
    backward_float_t(gates, c, dh, dc, dgates, dcp, hid, p0, p1);                                          \
  }
#ifdef INIK_CPU_ISAS
INIK_LSTM_ENTRIES(avx512, INIK_TARGET_AVX512, float)
INIK_LSTM_ENTRIES(avx512, INIK_TARGET_AVX512, at::BFloat16)
INIK_LSTM_ENTRIES(avx2, INIK_TARGET_AVX2, float)
INIK_LSTM_ENTRIES(avx2, INIK_TARGET_AVX2, at::BFloat16)
#endif
INIK_LSTM_ENTRIES(generic, , float)
INIK_LSTM_ENTRIES(generic, , at::BFloat16)

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
