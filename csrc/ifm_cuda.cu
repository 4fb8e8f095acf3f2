// CUDA implementations of the native IFM ops (schemas defined in ifm_cpu.cpp).
// Kernels: ifm_cuda_kernels.cuh; shared host preparation: ifm_host.h.

// CPU-only torch wheels ship no c10/cuda/impl/cuda_cmake_macros.h.
#if defined(__has_include)
#if !__has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#define C10_CUDA_NO_CMAKE_CONFIGURE_FILE
#endif
#endif

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "ifm_cuda_kernels.cuh"
#include "ifm_host.h"

namespace inik {
namespace {

constexpr int64_t kDefaultSmem = 48 * 1024;
// Blocks of the parameter-gradient kernel: enough to fill a large GPU, each holding
// one atom-gradient partial, at most kMaxPartialBytes of partials. Depends on the
// problem's shape only, so results are bitwise reproducible across runs and GPUs.
constexpr int64_t kMaxParamBlocks = 1024;
constexpr int64_t kMaxPartialBytes = 64 << 20;

cuda::Geom to_geom(const Geometry& g) {
  return cuda::Geom{g.B, g.C, g.H, g.W, g.R, g.N, g.Qmax, g.Hp, g.Wp, g.h};
}

// Block size for a kernel needing `values` shared values per thread; raises the
// kernel's dynamic shared-memory limit when even 32 threads need more than 48 KB.
template <class Kernel>
int block_for(Kernel kernel, int64_t values, int64_t elem, int64_t* smem) {
  const int bd = cuda::pick_block(values, elem, kDefaultSmem);
  *smem = cuda::smem_bytes(values, elem, bd);
  if (*smem > kDefaultSmem) {
    int dev = 0, optin = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    TORCH_CHECK(*smem <= optin, ::inik::msg("inik IFM (cuda): R, N, C too large for shared memory (", *smem,
                " bytes needed per block of 32 threads, device allows ", optin, ")"));
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(*smem)));
  }
  return bd;
}

struct DeviceTables {
  at::Tensor off, du, dv, Q;
};

DeviceTables tables(const Geometry& g, const at::Device& device) {
  auto i64 = at::TensorOptions().dtype(at::kLong);
  auto i32 = at::TensorOptions().dtype(at::kInt);
  return {at::tensor(g.off, i64).to(device), at::tensor(g.du, i32).to(device),
          at::tensor(g.dv, i32).to(device), at::tensor(g.Q, i32).to(device)};
}

int64_t blocks_for(int64_t n, int bd) { return (n + bd - 1) / bd; }

}  // namespace

at::Tensor ifm_forward_cuda(const at::Tensor& image, const at::Tensor& mu, const at::Tensor& omega,
                            const at::Tensor& atoms, at::IntArrayRef support, c10::string_view /*isa: CPU only*/) {
  const Geometry g = check_and_plan("ifm_native_forward", image, mu, omega, atoms, support);
  const c10::cuda::CUDAGuard guard(image.device());
  if (g.B * g.H * g.W == 0) return at::empty({g.B, g.C, g.H, g.W}, image.options());  // no blocks to launch
  const auto acc = acc_type(image.scalar_type());
  at::Tensor ypad = padded_image(image, g);
  at::Tensor mu_c = mu.to(acc).contiguous(), om_c = omega.to(acc).contiguous();
  at::Tensor Aqn = packed_atoms(atoms, g);
  DeviceTables tb = tables(g, image.device());
  at::Tensor out = at::empty({g.B, g.C, g.H, g.W}, image.options().dtype(acc));
  const cuda::Geom cg = to_geom(g);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "ifm_native_forward_cuda", [&] {
    int64_t smem = 0;
    const int bd = block_for(cuda::ifm_forward_kernel<scalar_t>, cuda::fwd_smem_values(cg),
                             sizeof(scalar_t), &smem);
    cuda::ifm_forward_kernel<scalar_t><<<blocks_for(g.B * g.H * g.W, bd), bd, smem, stream>>>(
        ypad.data_ptr<scalar_t>(), mu_c.data_ptr<scalar_t>(), om_c.data_ptr<scalar_t>(),
        Aqn.data_ptr<scalar_t>(), tb.off.data_ptr<int64_t>(), tb.Q.data_ptr<int>(),
        out.data_ptr<scalar_t>(), cg);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.to(image.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ifm_backward_cuda(
    const at::Tensor& grad, const at::Tensor& image, const at::Tensor& mu, const at::Tensor& omega,
    const at::Tensor& atoms, at::IntArrayRef support, std::array<bool, 4> needs,
    c10::string_view /*isa: CPU only*/) {
  const Geometry g = check_and_plan_backward(grad, image, mu, omega, atoms, support);
  const c10::cuda::CUDAGuard guard(image.device());
  const auto st = image.scalar_type();
  const auto acc = acc_type(st);
  const auto opt = image.options().dtype(acc);
  at::Tensor g_image = at::empty({0}, image.options()), g_mu = at::empty({0}, mu.options()),
             g_om = at::empty({0}, omega.options()), g_atoms = at::empty({0}, atoms.options());
  if (!(needs[0] || needs[1] || needs[2] || needs[3])) return {g_image, g_mu, g_om, g_atoms};
  if (g.B * g.H * g.W == 0) {  // no pixels: every gradient asked for is zero (and no blocks to launch)
    if (needs[0]) g_image = at::zeros_like(image, at::MemoryFormat::Contiguous);
    if (needs[1]) g_mu = at::zeros_like(mu, at::MemoryFormat::Contiguous);
    if (needs[2]) g_om = at::zeros_like(omega, at::MemoryFormat::Contiguous);
    if (needs[3]) g_atoms = at::zeros_like(atoms, at::MemoryFormat::Contiguous);
    return {g_image, g_mu, g_om, g_atoms};
  }

  at::Tensor mu_c = mu.to(acc).contiguous(), om_c = omega.to(acc).contiguous();
  at::Tensor dx = grad.to(acc).contiguous();
  at::Tensor Aqn = packed_atoms(atoms, g);
  DeviceTables tb = tables(g, image.device());
  const cuda::Geom cg = to_geom(g);
  const int64_t total = g.B * g.H * g.W;
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(acc, "ifm_native_backward_cuda", [&] {
    if (needs[0]) {
      at::Tensor dy = at::empty({g.B, g.C, g.H, g.W}, opt);
      int64_t smem = 0;
      const int bd = block_for(cuda::ifm_image_grad_kernel<scalar_t>, cuda::dy_smem_values(cg),
                               sizeof(scalar_t), &smem);
      cuda::ifm_image_grad_kernel<scalar_t><<<blocks_for(total, bd), bd, smem, stream>>>(
          dx.data_ptr<scalar_t>(), mu_c.data_ptr<scalar_t>(), om_c.data_ptr<scalar_t>(),
          Aqn.data_ptr<scalar_t>(), tb.du.data_ptr<int>(), tb.dv.data_ptr<int>(), tb.Q.data_ptr<int>(),
          dy.data_ptr<scalar_t>(), cg);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      g_image = dy.to(st);
    }
    if (needs[1] || needs[2] || needs[3]) {
      at::Tensor ypad = padded_image(image, g);
      at::Tensor dmu = needs[1] ? at::empty({g.B, g.R, g.H, g.W}, opt) : at::Tensor();
      at::Tensor dom = needs[2] ? at::empty({g.B, g.N, g.H, g.W}, opt) : at::Tensor();
      int64_t smem = 0;
      const int bd = block_for(cuda::ifm_param_grad_kernel<scalar_t>, cuda::param_smem_values(cg),
                               sizeof(scalar_t), &smem);
      const int64_t part_bytes = g.R * g.N * g.Qmax * static_cast<int64_t>(sizeof(scalar_t));
      const int64_t blocks = std::max<int64_t>(
          1, std::min({blocks_for(total, bd), kMaxParamBlocks, kMaxPartialBytes / part_bytes}));
      at::Tensor part = needs[3] ? at::zeros({blocks, g.R, g.N, g.Qmax}, opt) : at::Tensor();
      cuda::ifm_param_grad_kernel<scalar_t><<<blocks, bd, smem, stream>>>(
          ypad.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), mu_c.data_ptr<scalar_t>(),
          om_c.data_ptr<scalar_t>(), Aqn.data_ptr<scalar_t>(), tb.off.data_ptr<int64_t>(),
          tb.Q.data_ptr<int>(), needs[1] ? dmu.data_ptr<scalar_t>() : nullptr,
          needs[2] ? dom.data_ptr<scalar_t>() : nullptr, needs[3] ? part.data_ptr<scalar_t>() : nullptr,
          cg);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (needs[1]) g_mu = dmu.to(st);
      if (needs[2]) g_om = dom.to(st);
      if (needs[3]) {
        const int64_t n = g.R * g.N * g.Qmax;
        at::Tensor d = at::empty({g.R, g.N, g.Qmax}, opt);
        cuda::ifm_sum_partials_kernel<scalar_t><<<blocks_for(n, 256), 256, 0, stream>>>(
            part.data_ptr<scalar_t>(), blocks, n, d.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        g_atoms = unpack_atom_grad(d, g, st);
      }
    }
  });
  return {g_image, g_mu, g_om, g_atoms};
}

}  // namespace inik

TORCH_LIBRARY_IMPL(inik, CUDA, m) {
  m.impl("ifm_native_forward", &inik::ifm_forward_cuda);
  m.impl("ifm_native_backward", &inik::ifm_backward_cuda);
}
