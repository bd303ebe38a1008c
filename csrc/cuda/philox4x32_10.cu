// CUDA kernel of gls::philox4x32_10: the Philox4x32-10 block function on u32 words held in int64.
#include "noise.cuh"

namespace gls {
namespace {

__global__ void philox_kernel(const int64_t* __restrict__ c, const int64_t* __restrict__ k, int64_t n, int64_t* __restrict__ out) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
    U32x4 x{{(uint32_t)c[4 * j], (uint32_t)c[4 * j + 1], (uint32_t)c[4 * j + 2], (uint32_t)c[4 * j + 3]}};
    x = philox4x32_10(x, (uint32_t)k[2 * j], (uint32_t)k[2 * j + 1]);
#pragma unroll
    for (int w = 0; w < 4; ++w) out[4 * j + w] = x.v[w];
  }
}

Tensor philox4x32_10_cuda(const Tensor& counter, const Tensor& key) {
  check_philox_args(counter, key, kKernelDevice);
  GLS_DEVICE_GUARD(counter);
  const Tensor c = counter.contiguous(), k = key.contiguous();
  Tensor out = at::empty(c.sizes(), c.options());
  const int64_t n = c.numel() / 4;
  if (n == 0) return out;
  GLS_LAUNCH(grid_for(n), kThreads, 0, current_stream(), philox_kernel)(c.const_data_ptr<int64_t>(), k.const_data_ptr<int64_t>(), n,
                                                                                 out.mutable_data_ptr<int64_t>());
  GLS_LAUNCH_CHECK();
  return out;
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("philox4x32_10", &philox4x32_10_cuda); }

}  // namespace gls
