// CUDA kernel of gls::relu_relax: the ReLU relaxation lines, elementwise (same math as the CPU: gls/relax.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

#include "cuda_compat.cuh"
#include "gls/relax.h"

namespace gls {
namespace {

using at::Tensor;

template <typename T>
__global__ void relu_relax_kernel(const T* __restrict__ l, const T* __restrict__ u, int64_t n, int64_t method,
                                  T* __restrict__ a_l, T* __restrict__ c_l, T* __restrict__ a_u, T* __restrict__ c_u) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    relu_relax<T>(l[i], u[i], method, a_l[i], c_l[i], a_u[i], c_u[i]);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relu_relax_cuda(const Tensor& l, const Tensor& u, c10::string_view method) {
  const int64_t code = relax_method_code(std::string_view(method.data(), method.size()));
  TORCH_CHECK(code >= 0, "relu_relax: unknown method '", std::string(method), "' (expected ibp, hbox, crown-ibp, deeppoly or crown)");
  TORCH_CHECK(l.sizes() == u.sizes(), "relu_relax: l and u must have the same shape, got ", l.sizes(), " and ", u.sizes());
  TORCH_CHECK(l.scalar_type() == u.scalar_type(), "relu_relax: l and u must have the same dtype");
  TORCH_CHECK(l.device().type() == kKernelDevice && l.device() == u.device(), "relu_relax: l and u must be on the same CUDA device");
  GLS_DEVICE_GUARD(l);
  const Tensor lc = l.contiguous(), uc = u.contiguous();
  Tensor a_l = at::empty_like(lc), c_l = at::empty_like(lc), a_u = at::empty_like(lc), c_u = at::empty_like(lc);
  const int64_t n = lc.numel();
  if (n == 0) return {a_l, c_l, a_u, c_u};
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535));
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(lc.scalar_type(), "relu_relax_cuda", [&] {
    GLS_LAUNCH(blocks, threads, 0, stream, relu_relax_kernel<scalar_t>)(
        lc.const_data_ptr<scalar_t>(), uc.const_data_ptr<scalar_t>(), n, code, a_l.mutable_data_ptr<scalar_t>(),
        c_l.mutable_data_ptr<scalar_t>(), a_u.mutable_data_ptr<scalar_t>(), c_u.mutable_data_ptr<scalar_t>());
  });
  GLS_LAUNCH_CHECK();
  return {a_l, c_l, a_u, c_u};
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("relu_relax", &relu_relax_cuda); }

}  // namespace gls
