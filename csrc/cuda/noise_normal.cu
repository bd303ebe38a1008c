// CUDA kernel of gls::noise_normal: the normals of a population's rows, (R or 2R, d) in float32 (kernel in noise.cuh).
#include "noise.cuh"

namespace gls {
namespace {

Tensor noise_normal_cuda(const Tensor& members, int64_t d, int64_t seed, int64_t purpose, bool antithetic) {
  check_noise_members(members, members, kKernelDevice, "noise_normal");
  check_noise_dim(d, "noise_normal");
  GLS_DEVICE_GUARD(members);
  const Tensor m = members.contiguous();
  const int64_t n_members = m.size(0), rows = antithetic ? 2 * n_members : n_members;
  Tensor out = at::empty({rows, d}, m.options().dtype(at::kFloat));
  if (rows == 0) return out;
  GLS_LAUNCH(grid_for(n_members * ((d + 3) / 4)), kThreads, 0, current_stream(), population_kernel<float, false>)(
      nullptr, nullptr, 0, m.const_data_ptr<int64_t>(), n_members, d, (uint64_t)seed, (uint32_t)purpose, antithetic,
      out.mutable_data_ptr<float>());
  GLS_LAUNCH_CHECK();
  return out;
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("noise_normal", &noise_normal_cuda); }

}  // namespace gls
