// CUDA kernel of gls::noise_normal: the normals of a population's rows, (R or 2R, d) in float32 (kernel in noise.cuh).
#include "noise.cuh"

namespace gls {
namespace {

Tensor noise_normal_cuda(const Tensor& members, int64_t d, int64_t seed, int64_t purpose, bool antithetic) {
  check_noise_members(members, members, c10::DeviceType::CUDA, "noise_normal");
  check_noise_dim(d, "noise_normal");
  const c10::cuda::CUDAGuard guard(members.device());
  const Tensor m = members.contiguous();
  const int64_t n_members = m.size(0), rows = antithetic ? 2 * n_members : n_members;
  Tensor out = at::empty({rows, d}, m.options().dtype(at::kFloat));
  if (rows == 0) return out;
  population_kernel<float, false><<<grid_for(n_members * ((d + 3) / 4)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      nullptr, nullptr, 0, m.const_data_ptr<int64_t>(), n_members, d, (uint64_t)seed, (uint32_t)purpose, antithetic,
      out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CUDA, m) { m.impl("noise_normal", &noise_normal_cuda); }

}  // namespace gls
