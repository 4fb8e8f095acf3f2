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
#include "ifm_cpu_kernels.h"
#include "ifm_host.h"

namespace inik {
namespace cpu {

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
