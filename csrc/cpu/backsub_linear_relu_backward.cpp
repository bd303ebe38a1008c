// CPU kernel of gls::backsub_linear_relu_backward: the backward epilogue of backsub_linear_relu fused
// with the recomputation of g = lam W (maths in gls/meta/backsub_linear_relu.py).
//
// Tasks are (member, block of batch entries): the block's S rows per batch entry share one relaxation
// row, so a task owns its rows of the relaxation gradients (no races, fixed summation order). g is
// written by one GEMM (blocking.h) into the dg output block while it fits in L2 and rewritten in place.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "gls/bound_checks.h"
#include "vectorize.h"  // before the math headers: lets their branch-free selects vectorise
#include "gls/bound_ops.h"
#include "blocking.h"

namespace gls {
namespace {

using at::Tensor;

// One spec row: dg in place of g, relaxation gradients accumulated.
template <typename T>
GLS_SIMD_CLONES __attribute__((noinline)) void relax_grad_row(T* __restrict__ g, const T* __restrict__ up, T h,
                                                              const T* __restrict__ al, const T* __restrict__ cl,
                                                              const T* __restrict__ au, const T* __restrict__ cu,
                                                              T* __restrict__ d_al, T* __restrict__ d_cl,
                                                              T* __restrict__ d_au, T* __restrict__ d_cu, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const T v = g[j], u = up[j], pos = positive_part(v), neg = v - pos;
    d_al[j] += u * pos;
    d_cl[j] += h * pos;
    d_au[j] += u * neg;
    d_cu[j] += h * neg;
    const T on_pos = u * al[j] + h * cl[j], on_neg = u * au[j] + h * cu[j];
    g[j] = v > T(0) ? on_pos : (v < T(0) ? on_neg : T(0));
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backsub_backward_cpu(const Tensor& lam, const Tensor& W,
                                                                         const Tensor& grad_lam, const Tensor& grad_bias,
                                                                         const Tensor& a_l, const Tensor& c_l,
                                                                         const Tensor& a_u, const Tensor& c_u) {
  const char* op = "backsub_linear_relu_backward";
  const BacksubShape s = check_backsub(c10::DeviceType::CPU, lam, W, c10::nullopt, a_l, c_l, a_u, c_u);
  TORCH_CHECK(grad_lam.sizes() == at::IntArrayRef({s.P, s.B, s.S, s.n_in}), op, ": grad_lam must have shape (P,B,S,N_in) = (",
              s.P, ", ", s.B, ", ", s.S, ", ", s.n_in, "), got ", grad_lam.sizes());
  TORCH_CHECK(grad_bias.sizes() == lam.sizes().slice(0, 3), op, ": grad_bias must have shape (P,B,S) = ",
              lam.sizes().slice(0, 3), ", got ", grad_bias.sizes());
  check_tensors(op, c10::DeviceType::CPU, {{"lam", &lam}, {"grad_lam", &grad_lam}, {"grad_bias", &grad_bias}});
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), gl = grad_lam.contiguous(), gb = grad_bias.contiguous();
  const Tensor alc = a_l.contiguous(), clc = c_l.contiguous(), auc = a_u.contiguous(), cuc = c_u.contiguous();
  Tensor dg = at::empty({s.P, s.B, s.S, s.n_in}, lamc.options());
  Tensor d_al = at::empty({s.P, s.B, s.n_in}, lamc.options()), d_cl = at::empty_like(d_al);
  Tensor d_au = at::empty_like(d_al), d_cu = at::empty_like(d_al);
  if (d_al.numel() == 0 && dg.numel() == 0) return {dg, d_al, d_cl, d_au, d_cu};
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_linear_relu_backward_cpu", [&] {
    using T = scalar_t;
    const T *lp = lamc.const_data_ptr<T>(), *wp = Wc.const_data_ptr<T>(), *gp = gl.const_data_ptr<T>(),
            *hp = gb.const_data_ptr<T>();
    const T *al = alc.const_data_ptr<T>(), *cl = clc.const_data_ptr<T>(), *au = auc.const_data_ptr<T>(),
            *cu = cuc.const_data_ptr<T>();
    T *dgp = dg.mutable_data_ptr<T>(), *dal = d_al.mutable_data_ptr<T>(), *dcl = d_cl.mutable_data_ptr<T>(),
      *dau = d_au.mutable_data_ptr<T>(), *dcu = d_cu.mutable_data_ptr<T>();
    const int64_t S = s.S, n_in = s.n_in, n_out = s.n_out, rows = s.B * S;
    const int64_t batch = row_block(s.B, s.P, std::max<int64_t>(S, 1) * n_in * int64_t(sizeof(T)));
    const int64_t blocks = (s.B + batch - 1) / batch;
    const int64_t w_stride = s.w_shared ? 0 : n_out * n_in, r_stride = s.relax_shared ? 0 : s.B * n_in;
    const Gemm gemm;
    at::parallel_for(0, s.P * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / blocks, b0 = (task % blocks) * batch, b1 = std::min(s.B, b0 + batch);
        const int64_t r0 = b0 * S, nr = (b1 - b0) * S;
        T* g = dgp + (p * rows + r0) * n_in;
        if (nr > 0 && n_in > 0) {
          if (n_out > 0) {
            gemm_block<T>(gemm, nr, n_in, n_out, lp + (p * rows + r0) * n_out, n_out, wp + p * w_stride, n_in, false, g, n_in);
          } else {
            std::fill(g, g + nr * n_in, T(0));
          }
        }
        for (int64_t bi = b0; bi < b1; ++bi) {
          const int64_t out_off = (p * s.B + bi) * n_in, relax_off = p * r_stride + bi * n_in;
          std::fill(dal + out_off, dal + out_off + n_in, T(0));
          std::fill(dcl + out_off, dcl + out_off + n_in, T(0));
          std::fill(dau + out_off, dau + out_off + n_in, T(0));
          std::fill(dcu + out_off, dcu + out_off + n_in, T(0));
          for (int64_t si = 0; si < S; ++si) {
            const int64_t row = p * rows + bi * S + si;
            relax_grad_row<T>(dgp + row * n_in, gp + row * n_in, hp[row], al + relax_off, cl + relax_off,
                              au + relax_off, cu + relax_off, dal + out_off, dcl + out_off, dau + out_off,
                              dcu + out_off, n_in);
          }
        }
      }
    });
  });
  return {dg, d_al, d_cl, d_au, d_cu};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("backsub_linear_relu_backward", &backsub_backward_cpu); }

}  // namespace gls
