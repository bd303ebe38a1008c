// CUDA kernel of gls::backsub_linear_relu_backward (maths in gls/meta/backsub_linear_relu.py): g = lam W by
// cuBLAS (at::matmul), then one pass where a thread owns (member, batch entry, input) and walks the S
// spec rows: it rewrites g into dg in place and sums the four relaxation gradients in registers
// (coalesced along the input axis, no atomics, fixed order).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "cuda_compat.cuh"
#include "gls/bound_checks.h"
#include "gls/bound_ops.h"
#include "tiles.cuh"

namespace gls {
namespace {

using at::Tensor;

template <typename T>
__global__ void relax_grad_kernel(int64_t total, int64_t B, int64_t S, int64_t n, int64_t r_stride,
                                  T* __restrict__ g, const T* __restrict__ up, const T* __restrict__ h,
                                  const T* __restrict__ a_l, const T* __restrict__ c_l, const T* __restrict__ a_u,
                                  const T* __restrict__ c_u, T* __restrict__ d_al, T* __restrict__ d_cl,
                                  T* __restrict__ d_au, T* __restrict__ d_cu) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % n, pb = i / n, p = pb / B, b = pb % B;  // i = (p * B + b) * n + j
    const int64_t r = p * r_stride + b * n + j;
    const T al = a_l[r], cl = c_l[r], au = a_u[r], cu = c_u[r];
    T sal = T(0), scl = T(0), sau = T(0), scu = T(0);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t row = pb * S + s, e = row * n + j;
      const T v = g[e], u = up[e], hv = h[row], pos = positive_part(v), neg = v - pos;
      sal += u * pos;
      scl += hv * pos;
      sau += u * neg;
      scu += hv * neg;
      g[e] = v > T(0) ? u * al + hv * cl : (v < T(0) ? u * au + hv * cu : T(0));
    }
    d_al[i] = sal;
    d_cl[i] = scl;
    d_au[i] = sau;
    d_cu[i] = scu;
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backsub_backward_cuda(const Tensor& lam, const Tensor& W,
                                                                          const Tensor& grad_lam, const Tensor& grad_bias,
                                                                          const Tensor& a_l, const Tensor& c_l,
                                                                          const Tensor& a_u, const Tensor& c_u) {
  const char* op = "backsub_linear_relu_backward";
  const BacksubShape s = check_backsub(kKernelDevice, lam, W, c10::nullopt, a_l, c_l, a_u, c_u);
  TORCH_CHECK(grad_lam.sizes() == at::IntArrayRef({s.P, s.B, s.S, s.n_in}), op, ": grad_lam must have shape (P,B,S,N_in) = (",
              s.P, ", ", s.B, ", ", s.S, ", ", s.n_in, "), got ", grad_lam.sizes());
  TORCH_CHECK(grad_bias.sizes() == lam.sizes().slice(0, 3), op, ": grad_bias must have shape (P,B,S) = ",
              lam.sizes().slice(0, 3), ", got ", grad_bias.sizes());
  check_tensors(op, kKernelDevice, {{"lam", &lam}, {"grad_lam", &grad_lam}, {"grad_bias", &grad_bias}});
  GLS_DEVICE_GUARD(lam);
  const Tensor gl = grad_lam.contiguous(), gb = grad_bias.contiguous();
  const Tensor alc = a_l.contiguous(), clc = c_l.contiguous(), auc = a_u.contiguous(), cuc = c_u.contiguous();
  Tensor dg = s.n_out > 0 ? at::matmul(lam.reshape({s.P, s.B * s.S, s.n_out}), W).reshape({s.P, s.B, s.S, s.n_in}).contiguous()
                          : at::zeros({s.P, s.B, s.S, s.n_in}, lam.options());
  Tensor d_al = at::empty({s.P, s.B, s.n_in}, lam.options()), d_cl = at::empty({s.P, s.B, s.n_in}, lam.options());
  Tensor d_au = at::empty({s.P, s.B, s.n_in}, lam.options()), d_cu = at::empty({s.P, s.B, s.n_in}, lam.options());
  const int64_t total = d_al.numel();
  if (total == 0) return {dg, d_al, d_cl, d_au, d_cu};
  constexpr int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(cuda_tiles::ceil_div(total, threads), 65535));
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "backsub_linear_relu_backward_cuda", [&] {
    GLS_LAUNCH(blocks, threads, 0, stream, relax_grad_kernel<scalar_t>)(
        total, s.B, s.S, s.n_in, s.relax_shared ? 0 : s.B * s.n_in, dg.mutable_data_ptr<scalar_t>(),
        gl.const_data_ptr<scalar_t>(), gb.const_data_ptr<scalar_t>(), alc.const_data_ptr<scalar_t>(),
        clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(), cuc.const_data_ptr<scalar_t>(),
        d_al.mutable_data_ptr<scalar_t>(), d_cl.mutable_data_ptr<scalar_t>(), d_au.mutable_data_ptr<scalar_t>(),
        d_cu.mutable_data_ptr<scalar_t>());
  });
  GLS_LAUNCH_CHECK();
  return {dg, d_al, d_cl, d_au, d_cu};
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("backsub_linear_relu_backward", &backsub_backward_cuda); }

}  // namespace gls
