// CUDA kernel of gls::backsub_conv_relu (definition:
// gls/reference/bound_ops.py; same maths and conventions as csrc/cpu/backsub_conv_relu.cpp;
// shared geometry in conv_windows.cuh).
//
// Forward: one block per row, threads over the elements (ci, y, x) of its window on z_in. Each thread
// gathers its element of the transposed convolution, g[ci,y,x] = sum over taps (ky, kx) with
// y - ky*d0 = qy*s0 and x - kx*d1 = qx*s1 inside the row's (h, w) window of sum_co lam[co,qy,qx]
// W[co,ci,ky,kx], reads the ReLU lines straight from the maps at the row's origin (zero outside the
// map) and selects (a_l, c_l) where g >= 0, (a_u, c_u) elsewhere. The constant (g C plus lam . b) is a
// block reduction in a fixed order, so results do not depend on scheduling. With keep_window the
// thread also writes g (0 outside the map) for the backward.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <climits>
#include <tuple>
#include <vector>

#include "cuda_compat.cuh"
#include "gls/bound_checks.h"
#include "conv_windows.cuh"
#include "tiles.cuh"

namespace gls {
namespace {

using at::Tensor;
using namespace conv_windows;
using cuda_tiles::ceil_div;
using cuda_tiles::grid_dim;

template <typename T>
__global__ void conv_forward_kernel(ConvArgs a, const T* __restrict__ lam, const T* __restrict__ W,
                                    const T* __restrict__ b, const T* __restrict__ a_l, const T* __restrict__ c_l,
                                    const T* __restrict__ a_u, const T* __restrict__ c_u,
                                    const int64_t* __restrict__ origin, T* __restrict__ out, T* __restrict__ bias,
                                    T* __restrict__ window) {
  const RowWindow<T> rw(a, blockIdx.x, lam, W, origin);
  T* o = out + rw.row * rw.win;
  T* gw = window != nullptr ? window + rw.row * rw.win : nullptr;  // g kept for the backward, 0 outside the map
  T part = T(0);
  for (int e = threadIdx.x; e < rw.win; e += blockDim.x) {
    int ci, y, x;
    const int64_t i = rw.pixel(a, e, ci, y, x);
    if (i < 0) {
      o[e] = T(0);
      if (gw != nullptr) gw[e] = T(0);
      continue;
    }
    const T g = transposed_conv_at<T>(a, rw.lam_row, rw.Wp, ci, y, x);
    if (gw != nullptr) gw[e] = g;
    const bool pos = g >= T(0);
    o[e] = g * (pos ? a_l[i] : a_u[i]);
    part += g * (pos ? c_l[i] : c_u[i]);
  }
  if (b != nullptr) {
    const T* bp = b + rw.p * a.b_stride;
    for (int k = threadIdx.x; k < rw.lam_n; k += blockDim.x) part += rw.lam_row[k] * bp[k / rw.hw];
  }
  const T total = block_sum<T>(part);
  if (threadIdx.x == 0) bias[rw.row] = total;
}

std::tuple<Tensor, Tensor, Tensor> backsub_conv_relu_cuda(const Tensor& lam, const Tensor& W,
                                                          const c10::optional<Tensor>& b, const Tensor& a_l,
                                                          const Tensor& c_l, const Tensor& a_u, const Tensor& c_u,
                                                          const Tensor& origin, at::IntArrayRef stride,
                                                          at::IntArrayRef dilation, bool keep_window) {
  const char* op = "backsub_conv_relu";
  const BacksubConvShape s =
      check_backsub_conv(kKernelDevice, lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation);
  GLS_DEVICE_GUARD(lam);
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous(), oc = origin.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor out = at::empty({s.P, s.B, s.R, s.c_in, s.h2, s.w2}, lamc.options());
  Tensor bias = at::empty({s.P, s.B, s.R}, lamc.options());
  Tensor window = keep_window ? at::empty(out.sizes(), lamc.options()) : at::empty({0}, lamc.options());
  const int64_t rows = s.P * s.B * s.R;
  if (rows == 0) return {out, bias, window};
  const ConvArgs args = make_args(s);
  const int threads = row_threads(std::max(s.c_in * s.h2 * s.w2, s.c_out * s.h * s.w));
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_conv_relu_cuda", [&] {
    GLS_LAUNCH(grid_dim(op, "P*B*R", rows, INT_MAX), threads, 0, stream, conv_forward_kernel<scalar_t>)(
        args, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
        bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, alc.const_data_ptr<scalar_t>(),
        clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(), cuc.const_data_ptr<scalar_t>(),
        oc.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), bias.mutable_data_ptr<scalar_t>(),
        keep_window ? window.mutable_data_ptr<scalar_t>() : nullptr);
    GLS_LAUNCH_CHECK();
  });
  return {out, bias, window};
}


}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("backsub_conv_relu", &backsub_conv_relu_cuda); }

}  // namespace gls
