// Host-side preparation shared by the CPU and CUDA implementations of the native
// IFM ops: argument checks, the ring tap order, packed atoms, padded image.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <type_traits>
#include <vector>

#include "ifm_common.h"

namespace inik {

// Error messages are assembled here with std::to_string, never through an
// ostream: with GCC 13 headers and torch 2.11
// c10::str's ostringstream, instantiated inside this library, crashed with
// SIGSEGV in basic_ostream::_M_insert<long> (cuda-gdb backtrace) when a failed
// check formatted an integer, killing Python instead of raising. TORCH_CHECK
// with one std::string argument takes c10's stream-free path.
inline void msg_part(std::string& s, const char* p) { s += p; }
inline void msg_part(std::string& s, const std::string& p) { s += p; }
inline void msg_part(std::string& s, at::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += "]";
}
inline void msg_part(std::string& s, at::ScalarType t) { s += c10::toString(t); }
inline void msg_part(std::string& s, const at::Device& d) { s += d.str(); }
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline void msg_part(std::string& s, T v) { s += std::to_string(v); }

template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (msg_part(s, args), ...);
  return s;
}

// Lanes per CPU tile (pixels along a row processed together); also the width
// the padded image is rounded to, so a tile's vector loads never leave it.
constexpr int64_t kTile = 16;
constexpr int64_t kMaxK = 1023;  // inik.ops.ifm.MAX_ATOM_SIZE: K*K taps and their offsets stay inside int32

struct Geometry {
  int64_t B, C, H, W, R, N, K, h;
  int64_t Qmax;  // taps any scale uses: max_r s_r^2
  int64_t Qpad;  // Qmax rounded up to kTile
  int64_t Hp, Wp;  // padded image plane: H + 2h rows, round_up(W, kTile) + 2h columns
  std::vector<int> Q;  // per scale: s_r^2
  std::vector<int> du, dv;  // per tap, ring order
  std::vector<int64_t> off;  // per tap: du * Wp + dv (offset in the padded plane)
  std::vector<int64_t> tap;  // per tap: row-major index in the K x K atom
};

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline Geometry check_and_plan(const char* op, const at::Tensor& image, const at::Tensor& mu,
                               const at::Tensor& omega, const at::Tensor& atoms,
                               at::IntArrayRef support) {
  for (const at::Tensor* t : {&image, &mu, &omega, &atoms}) {
    TORCH_CHECK(t->dim() == 4, ::inik::msg(op, ": inputs must be 4-D, got shape ", t->sizes()));
    TORCH_CHECK(t->scalar_type() == image.scalar_type(), ::inik::msg(op,
                ": all inputs must share one dtype, got ", image.scalar_type(), " and ",
                t->scalar_type()));
    TORCH_CHECK(t->device() == image.device(), ::inik::msg(op, ": all inputs must be on one device, got ",
                image.device(), " and ", t->device()));
  }
  const auto st = image.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, ::inik::msg(op,
              ": dtype must be float32, float64, float16 or bfloat16, got ", st));
  Geometry g;
  g.B = image.size(0);
  g.C = image.size(1);
  g.H = image.size(2);
  g.W = image.size(3);
  g.R = atoms.size(0);
  g.N = atoms.size(1);
  g.K = atoms.size(2);
  TORCH_CHECK(atoms.size(3) == g.K && g.K % 2 == 1, ::inik::msg(op, ": atoms must be (R, N, K, K) with K odd, got ",
              atoms.sizes()));
  TORCH_CHECK(g.K <= kMaxK, ::inik::msg(op, ": atoms' kernel size K must be at most ", kMaxK, ", got K=", g.K));
  TORCH_CHECK(g.R >= 1 && g.N >= 1, ::inik::msg(op, ": atoms must have R >= 1 and N >= 1, got ", atoms.sizes()));
  TORCH_CHECK(mu.sizes() == at::IntArrayRef({g.B, g.R, g.H, g.W}), ::inik::msg(op, ": mu must be (B, R, H, W) = (",
              g.B, ", ", g.R, ", ", g.H, ", ", g.W, "), got ", mu.sizes()));
  TORCH_CHECK(omega.sizes() == at::IntArrayRef({g.B, g.N, g.H, g.W}), ::inik::msg(op,
              ": omega must be (B, N, H, W) = (", g.B, ", ", g.N, ", ", g.H, ", ", g.W, "), got ",
              omega.sizes()));
  TORCH_CHECK(static_cast<int64_t>(support.size()) == g.R, ::inik::msg(op, ": support must give R=", g.R,
              " sizes, got ", support.size()));
  g.h = g.K / 2;
  g.Qmax = 0;
  for (int64_t s : support) {
    TORCH_CHECK(s >= 1 && s <= g.K && s % 2 == 1, ::inik::msg(op, ": support sizes must be odd and in [1, K=", g.K,
                "], got ", support));
    g.Q.push_back(static_cast<int>(s * s));
    g.Qmax = std::max<int64_t>(g.Qmax, s * s);
  }
  g.Qpad = (g.Qmax + kTile - 1) / kTile * kTile;
  g.Hp = g.H + 2 * g.h;
  g.Wp = (g.W + kTile - 1) / kTile * kTile + 2 * g.h;
  const int kk = static_cast<int>(g.K * g.K);
  g.du.resize(kk);
  g.dv.resize(kk);
  ring_order(static_cast<int>(g.K), g.du.data(), g.dv.data());
  g.du.resize(g.Qmax);
  g.dv.resize(g.Qmax);
  for (int64_t q = 0; q < g.Qmax; ++q) {
    g.off.push_back(g.du[q] * g.Wp + g.dv[q]);
    g.tap.push_back((g.du[q] + g.h) * g.K + (g.dv[q] + g.h));
  }
  return g;
}

// check_and_plan for the backward: also checks that grad matches image.
inline Geometry check_and_plan_backward(const at::Tensor& grad, const at::Tensor& image, const at::Tensor& mu,
                                        const at::Tensor& omega, const at::Tensor& atoms,
                                        at::IntArrayRef support) {
  const Geometry g = check_and_plan("ifm_native_backward", image, mu, omega, atoms, support);
  TORCH_CHECK(grad.sizes() == image.sizes() && grad.scalar_type() == image.scalar_type() &&
                  grad.device() == image.device(), ::inik::msg("ifm_native_backward: grad must match image (shape ", image.sizes(), ", dtype ",
              image.scalar_type(), "), got shape ", grad.sizes(), ", dtype ", grad.scalar_type()));
  return g;
}

// The padded image in the accumulation type: (B, C, Hp, Wp), contiguous, zeros around.
inline at::Tensor padded_image(const at::Tensor& image, const Geometry& g) {
  const auto acc = acc_type(image.scalar_type());
  return at::constant_pad_nd(image.to(acc), {g.h, g.Wp - g.W - g.h, g.h, g.h}, 0).contiguous();
}

inline at::Tensor tap_index(const Geometry& g, const at::Device& device) {
  return at::tensor(g.tap, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Atoms in ring order, (R, Qmax, N) - n fastest - in the accumulation type, with
// every tap outside a scale's support zeroed.
inline at::Tensor packed_atoms(const at::Tensor& atoms, const Geometry& g) {
  const auto acc = acc_type(atoms.scalar_type());
  at::Tensor flat = atoms.to(acc).reshape({g.R, g.N, g.K * g.K});
  at::Tensor packed = flat.index_select(2, tap_index(g, atoms.device()));  // (R, N, Qmax)
  std::vector<float> mask(g.R * g.Qmax);
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t q = 0; q < g.Qmax; ++q) mask[r * g.Qmax + q] = q < g.Q[r] ? 1.f : 0.f;
  at::Tensor m = at::tensor(mask).view({g.R, 1, g.Qmax}).to(packed.options());
  return (packed * m).permute({0, 2, 1}).contiguous();
}

// (R, N, >= Qmax) ring-ordered atom gradient -> (R, N, K, K), zero outside each support.
inline at::Tensor unpack_atom_grad(const at::Tensor& d, const Geometry& g, at::ScalarType out_dtype) {
  std::vector<float> mask(g.R * g.Qmax);
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t q = 0; q < g.Qmax; ++q) mask[r * g.Qmax + q] = q < g.Q[r] ? 1.f : 0.f;
  at::Tensor m = at::tensor(mask).view({g.R, 1, g.Qmax}).to(d.options());
  at::Tensor dq = d.narrow(2, 0, g.Qmax) * m;
  at::Tensor out = at::zeros({g.R, g.N, g.K * g.K}, d.options());
  out.index_copy_(2, tap_index(g, d.device()), dq);
  return out.view({g.R, g.N, g.K, g.K}).to(out_dtype);
}

}  // namespace inik
