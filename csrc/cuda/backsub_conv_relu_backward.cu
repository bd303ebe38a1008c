// CUDA kernels of gls::backsub_conv_relu_backward (the closed-form backward of backsub_conv_relu;
// maths in gls/meta/backsub_conv_relu.py, shared geometry in conv_windows.cuh).
//
// Backward, deterministic (no atomics), from the window g the forward kept: (1) per row block, write
// dg = G A + h C to a scratch window, then d_lam = conv(dg, W) + h b from the row's dg (when asked);
// (2) when asked, one thread per map pixel of a (member, sample) walks its rows in order and sums the
// line gradients G g, h g by the sign of g;
// (3) one block per (member, filter tap or bias entry) reduces dW = sum lam (x) dg and db = sum h lam
// over the member's rows in a fixed order.
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

// Backward, per row: dg = G A + h C on the window (0 outside the map; g from the forward), then
// d_lam[co,qy,qx] = sum_{ci,ky,kx} dg[ci, qy*s0 + ky*d0, qx*s1 + kx*d1] W[co,ci,ky,kx] + h b[co].
// dgwin is written and read back by the same block, so it is a plain (not read-only) pointer.
template <typename T>
__global__ void conv_row_backward_kernel(ConvArgs a, const T* __restrict__ lam, const T* __restrict__ W,
                                         const T* __restrict__ b, const T* __restrict__ a_l,
                                         const T* __restrict__ c_l, const T* __restrict__ a_u,
                                         const T* __restrict__ c_u, const int64_t* __restrict__ origin,
                                         const T* __restrict__ gwin, const T* __restrict__ grad_out,
                                         const T* __restrict__ grad_bias, T* dgwin, T* __restrict__ d_lam) {
  const RowWindow<T> rw(a, blockIdx.x, lam, W, origin);
  const int64_t row = rw.row, p = rw.p;
  const int hw = rw.hw, lam_n = rw.lam_n;
  const T* Wp = rw.Wp;
  const T hv = grad_bias[row];
  const T* go = grad_out != nullptr ? grad_out + row * rw.win : nullptr;  // null: lam' has no gradient
  const T* gr = gwin + row * rw.win;
  T* dg = dgwin + row * rw.win;
  for (int e = threadIdx.x; e < rw.win; e += blockDim.x) {
    int ci, y, x;
    const int64_t i = rw.pixel(a, e, ci, y, x);
    if (i < 0) {
      dg[e] = T(0);
      continue;
    }
    const T g = gr[e], up = go != nullptr ? go[e] : T(0);
    dg[e] = g >= T(0) ? up * a_l[i] + hv * c_l[i] : up * a_u[i] + hv * c_u[i];
  }
  __syncthreads();  // the row's dg is complete and visible to the whole block
  if (d_lam == nullptr) return;  // not asked for (constant rows)
  const int taps = a.kh * a.kw, filter = a.c_in * taps;
  const T* bp = b != nullptr ? b + p * a.b_stride : nullptr;
  for (int k = threadIdx.x; k < lam_n; k += blockDim.x) {
    const int co = k / hw, qy = k % hw / a.w, qx = k % a.w;
    const T* wf = Wp + int64_t(co) * filter;
    T sum = T(0);
    for (int ci = 0; ci < a.c_in; ++ci)
      for (int ky = 0; ky < a.kh; ++ky) {
        const T* src = dg + (int64_t(ci) * a.h2 + qy * a.s0 + ky * a.d0) * a.w2 + qx * a.s1;
        const T* wt = wf + ci * taps + ky * a.kw;
        for (int kx = 0; kx < a.kw; ++kx) sum += src[kx * a.d1] * wt[kx];
      }
    d_lam[row * lam_n + k] = sum + (bp != nullptr ? hv * bp[co] : T(0));
  }
}

// Line gradients: a thread owns one pixel (member, sample, ci, gy, gx) and walks the sample's rows in
// order, summing G g and h g into the lower lines where g >= 0 and into the upper lines elsewhere.
template <typename T>
__global__ void conv_line_grad_kernel(ConvArgs a, int64_t total, const int64_t* __restrict__ origin,
                                      const T* __restrict__ gwin, const T* __restrict__ grad_out,
                                      const T* __restrict__ grad_bias, T* __restrict__ d_al, T* __restrict__ d_cl,
                                      T* __restrict__ d_au, T* __restrict__ d_cu) {
  const int64_t map = int64_t(a.c_in) * a.H * a.W, win2 = int64_t(a.h2) * a.w2, win = a.c_in * win2;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pb = i / map, m = i % map, ci = m / (int64_t(a.H) * a.W), gy = m / a.W % a.H, gx = m % a.W;
    T sal = T(0), scl = T(0), sau = T(0), scu = T(0);
    for (int64_t r = 0; r < a.R; ++r) {
      const int64_t row = pb * a.R + r, y = gy - origin[2 * row], x = gx - origin[2 * row + 1];
      if (y < 0 || y >= a.h2 || x < 0 || x >= a.w2) continue;
      const int64_t e = row * win + ci * win2 + y * a.w2 + x;
      const T g = gwin[e], up = grad_out != nullptr ? grad_out[e] : T(0), hv = grad_bias[row];
      if (g >= T(0)) {
        sal += up * g;
        scl += hv * g;
      } else {
        sau += up * g;
        scu += hv * g;
      }
    }
    d_al[i] = sal;
    d_cl[i] = scl;
    d_au[i] = sau;
    d_cu[i] = scu;
  }
}

// Filter and bias gradients of member p = blockIdx.y: block j < C_out*C_in*kh*kw reduces
// dW[co,ci,ky,kx] = sum over rows and window pixels q of lam[co,q] dg[ci, qy*s0 + ky*d0, qx*s1 + kx*d1];
// block j = filters + co reduces db[co] = sum over rows of h * sum_q lam[co,q].
template <typename T>
__global__ void conv_param_grad_kernel(ConvArgs a, const T* __restrict__ lam, const T* __restrict__ dgwin,
                                       const T* __restrict__ grad_bias, T* __restrict__ d_W, T* __restrict__ d_b) {
  const int64_t p = blockIdx.y, j = blockIdx.x;
  const int hw = a.h * a.w, lam_n = a.c_out * hw, win2 = a.h2 * a.w2, win = a.c_in * win2;
  const int taps = a.kh * a.kw, filter = a.c_in * taps, filters = a.c_out * filter;
  const int64_t rows = a.B * a.R, items = rows * hw, row0 = p * rows;
  T part = T(0);
  if (j < filters) {
    const int co = j / filter, ci = j % filter / taps, ky = j % taps / a.kw, kx = j % a.kw;
    const int tap = (ci * a.h2 + ky * a.d0) * a.w2 + kx * a.d1;
    for (int64_t t = threadIdx.x; t < items; t += blockDim.x) {
      const int64_t row = row0 + t / hw;
      const int q = t % hw, qy = q / a.w, qx = q % a.w;
      const T v = lam[row * lam_n + co * hw + q];
      if (v != T(0)) part += v * dgwin[row * win + tap + qy * a.s0 * a.w2 + qx * a.s1];
    }
  } else {
    const int co = j - filters;
    for (int64_t t = threadIdx.x; t < items; t += blockDim.x) {
      const int64_t row = row0 + t / hw;
      part += grad_bias[row] * lam[row * lam_n + co * hw + t % hw];
    }
  }
  const T total = block_sum<T>(part);
  if (threadIdx.x == 0) {
    if (j < filters)
      d_W[p * filters + j] = total;
    else
      d_b[p * a.c_out + (j - filters)] = total;
  }
}


std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backsub_conv_relu_backward_cuda(
    const Tensor& lam, const Tensor& W, const c10::optional<Tensor>& b, const Tensor& a_l, const Tensor& c_l,
    const Tensor& a_u, const Tensor& c_u, const Tensor& origin, at::IntArrayRef stride, at::IntArrayRef dilation,
    const Tensor& window, const Tensor& grad_lam, const Tensor& grad_bias, bool lam_grad, bool line_grads) {
  const char* op = "backsub_conv_relu_backward";
  const BacksubConvShape s =
      check_backsub_conv(kKernelDevice, lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation);
  check_backsub_conv_grads(kKernelDevice, s, lam, window, grad_lam, grad_bias);
  GLS_DEVICE_GUARD(lam);
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous(), oc = origin.contiguous(), gwin = window.contiguous(),
               go = grad_lam.contiguous(), gb = grad_bias.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  const auto opts = lamc.options();
  const std::vector<int64_t> maps{s.P, s.B, s.c_in, s.H, s.W};
  const auto none = [&opts]() { return at::empty({0}, opts); };  // a fresh one per output: outputs may not alias
  Tensor d_lam = lam_grad ? at::empty(lamc.sizes(), opts) : none();
  Tensor d_W = at::empty({s.P, s.c_out, s.c_in, s.kh, s.kw}, opts);
  Tensor d_b = bc.defined() ? at::empty({s.P, s.c_out}, opts) : at::zeros({0}, opts);
  Tensor d_al = line_grads ? at::empty(maps, opts) : none(), d_cl = line_grads ? at::empty(maps, opts) : none(),
         d_au = line_grads ? at::empty(maps, opts) : none(), d_cu = line_grads ? at::empty(maps, opts) : none();
  const int64_t rows = s.P * s.B * s.R;
  if (rows == 0) {  // nothing flows back: every gradient is zero
    for (Tensor* t : {&d_W, &d_b, &d_al, &d_cl, &d_au, &d_cu}) t->zero_();
    return {d_lam, d_W, d_b, d_al, d_cl, d_au, d_cu};
  }
  const ConvArgs args = make_args(s);
  Tensor dgwin = at::empty(gwin.sizes(), opts);
  const int threads = row_threads(std::max(s.c_in * s.h2 * s.w2, s.c_out * s.h * s.w));
  const int64_t pixels = d_al.numel(), params = s.c_out * s.c_in * s.kh * s.kw + (bc.defined() ? s.c_out : 0);
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_conv_relu_backward_cuda", [&] {
    const scalar_t* up = go.numel() > 0 ? go.const_data_ptr<scalar_t>() : nullptr;  // null: lam' has no gradient
    GLS_LAUNCH(grid_dim(op, "P*B*R", rows, INT_MAX), threads, 0, stream, conv_row_backward_kernel<scalar_t>)(
        args, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
        bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, alc.const_data_ptr<scalar_t>(),
        clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(), cuc.const_data_ptr<scalar_t>(),
        oc.const_data_ptr<int64_t>(), gwin.const_data_ptr<scalar_t>(), up, gb.const_data_ptr<scalar_t>(),
        dgwin.mutable_data_ptr<scalar_t>(), lam_grad ? d_lam.mutable_data_ptr<scalar_t>() : nullptr);
    GLS_LAUNCH_CHECK();
    if (pixels > 0) {
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(pixels, kMaxThreads), 65535));
      GLS_LAUNCH(blocks, kMaxThreads, 0, stream, conv_line_grad_kernel<scalar_t>)(
          args, pixels, oc.const_data_ptr<int64_t>(), gwin.const_data_ptr<scalar_t>(), up, gb.const_data_ptr<scalar_t>(),
          d_al.mutable_data_ptr<scalar_t>(), d_cl.mutable_data_ptr<scalar_t>(),
          d_au.mutable_data_ptr<scalar_t>(), d_cu.mutable_data_ptr<scalar_t>());
      GLS_LAUNCH_CHECK();
    }
    if (params > 0) {
      const dim3 grid(grid_dim(op, "C_out*C_in*kh*kw", params, INT_MAX), grid_dim(op, "P", s.P, 65535));
      GLS_LAUNCH(grid, kMaxThreads, 0, stream, conv_param_grad_kernel<scalar_t>)(
          args, lamc.const_data_ptr<scalar_t>(), dgwin.const_data_ptr<scalar_t>(), gb.const_data_ptr<scalar_t>(),
          d_W.mutable_data_ptr<scalar_t>(), bc.defined() ? d_b.mutable_data_ptr<scalar_t>() : nullptr);
      GLS_LAUNCH_CHECK();
    }
  });
  return {d_lam, d_W, d_b, d_al, d_cl, d_au, d_cu};
}


}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("backsub_conv_relu_backward", &backsub_conv_relu_backward_cuda); }

}  // namespace gls
