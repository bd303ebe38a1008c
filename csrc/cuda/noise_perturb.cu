// CUDA kernel of gls::noise_perturb: theta + sigma * eps_p for every population row, noise regenerated (kernel in noise.cuh).
#include "noise.cuh"

namespace gls {
namespace {

Tensor noise_perturb_cuda(const Tensor& theta, const Tensor& sigma, const Tensor& members, int64_t seed, int64_t purpose, bool antithetic) {
  check_noise_theta(theta);
  check_noise_members(members, theta, kKernelDevice, "noise_perturb");
  const int64_t d = theta.size(0);
  const int64_t sigma_stride = check_noise_sigma(sigma, d, theta, "noise_perturb");
  GLS_DEVICE_GUARD(theta);
  const Tensor th = theta.contiguous(), sg = sigma.reshape({-1}).contiguous(), m = members.contiguous();
  const int64_t n_members = m.size(0), rows = antithetic ? 2 * n_members : n_members;
  Tensor out = at::empty({rows, d}, th.options());
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(th.scalar_type(), "noise_perturb_cuda", [&] {
    GLS_LAUNCH(grid_for(n_members * ((d + 3) / 4)), kThreads, 0, current_stream(), population_kernel<scalar_t, true>)(
        th.const_data_ptr<scalar_t>(), sg.const_data_ptr<scalar_t>(), sigma_stride, m.const_data_ptr<int64_t>(), n_members, d,
        (uint64_t)seed, (uint32_t)purpose, antithetic, out.mutable_data_ptr<scalar_t>());
  });
  GLS_LAUNCH_CHECK();
  return out;
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("noise_perturb", &noise_perturb_cuda); }

}  // namespace gls
