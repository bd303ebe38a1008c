// CPU kernel of gls::backsub_linear_relu: lam <- relax(lam W), bias <- lam.b + relaxation constants.
//
// Design: for each population member and block of rows (specs), one GEMM (blocking.h's Gemm: oneDNN or
// BLAS on raw blocks, single-threaded inside our parallel region) writes the block of lam W straight into
// its place in the output, sized to stay in L2; the sign-split epilogue then rewrites that block in
// place while it is still cached and reduces the bias row sums. The unrelaxed lam W never makes a round
// trip to main memory and no temporaries are allocated. A hand-written loop cannot reach the GEMM libraries'
// speed here: the build targets baseline x86-64 (no -march), while they pick AVX2/AVX-512 kernels at run time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

// Sign-split epilogue on one row of lam W, in place; returns the row's bias term. The sum runs in
// kLanes independent partial sums (fixed order, so results do not depend on the vector width), which
// lets the compiler vectorise it without reassociating.
template <typename T>
GLS_SIMD_CLONES __attribute__((noinline)) T relax_row(T* __restrict__ o, const T* __restrict__ al, const T* __restrict__ cl,
                                      const T* __restrict__ au, const T* __restrict__ cu, int64_t n) {
  T lane[kLanes<T>] = {};
  int64_t j = 0;
  for (; j + kLanes<T> <= n; j += kLanes<T>) {
    for (int64_t l = 0; l < kLanes<T>; ++l) {
      const T g = o[j + l], pos = positive_part(g), neg = g - pos;
      lane[l] += sign_split(pos, neg, cl[j + l], cu[j + l]);
      o[j + l] = sign_split(pos, neg, al[j + l], au[j + l]);
    }
  }
  for (int64_t l = 0; j < n; ++j, ++l) {
    const T g = o[j], pos = positive_part(g), neg = g - pos;
    lane[l] += sign_split(pos, neg, cl[j], cu[j]);
    o[j] = sign_split(pos, neg, al[j], au[j]);
  }
  return lane_sum(lane);
}

template <typename T>
void backsub_cpu_impl(const BacksubShape& s, const T* lam, const T* W, const T* b, const T* a_l, const T* c_l,
                      const T* a_u, const T* c_u, T* out, T* bias) {
  const int64_t rows = s.B * s.S, n_in = s.n_in, n_out = s.n_out;
  const int64_t block = row_block(rows, s.P, n_in * int64_t(sizeof(T)));
  const int64_t blocks_per_member = (rows + block - 1) / block;
  const int64_t w_stride = s.w_shared ? 0 : n_out * n_in;
  const int64_t b_stride = s.b_shared ? 0 : n_out;
  const int64_t r_stride = s.relax_shared ? 0 : s.B * n_in;
  const Gemm gemm;
  at::parallel_for(0, s.P * blocks_per_member, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / blocks_per_member;
      const int64_t r0 = (task % blocks_per_member) * block, r1 = std::min(rows, r0 + block);
      const T* lam_p = lam + (p * rows + r0) * n_out;
      T* out_p = out + (p * rows + r0) * n_in;
      if (n_in > 0) {
        if (n_out > 0) {
          gemm_block<T>(gemm, r1 - r0, n_in, n_out, lam_p, n_out, W + p * w_stride, n_in, false, out_p, n_in);
        } else {
          std::fill(out_p, out_p + (r1 - r0) * n_in, T(0));
        }
      }
      T* bias_p = bias + p * rows + r0;
      if (b != nullptr && n_out > 0) {  // bias = lam . b for the block's rows: one GEMV
        gemm_block<T>(gemm, r1 - r0, 1, n_out, lam_p, n_out, b + p * b_stride, 1, false, bias_p, 1);
      } else {
        std::fill(bias_p, bias_p + (r1 - r0), T(0));
      }
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t relax_off = p * r_stride + (r / s.S) * n_in;
        bias_p[r - r0] += relax_row<T>(out_p + (r - r0) * n_in, a_l + relax_off, c_l + relax_off, a_u + relax_off,
                                       c_u + relax_off, n_in);
      }
    }
  });
}

std::tuple<Tensor, Tensor> backsub_linear_relu_cpu(const Tensor& lam, const Tensor& W, const c10::optional<Tensor>& b,
                                                   const Tensor& a_l, const Tensor& c_l, const Tensor& a_u,
                                                   const Tensor& c_u) {
  const BacksubShape s = check_backsub(c10::DeviceType::CPU, lam, W, b, a_l, c_l, a_u, c_u);
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor out = at::empty({s.P, s.B, s.S, s.n_in}, lamc.options());
  Tensor bias = at::empty({s.P, s.B, s.S}, lamc.options());
  if (bias.numel() == 0) return {out, bias};
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_linear_relu_cpu", [&] {
    backsub_cpu_impl<scalar_t>(s, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
                               bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, alc.const_data_ptr<scalar_t>(),
                               clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(),
                               cuc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                               bias.mutable_data_ptr<scalar_t>());
  });
  return {out, bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("backsub_linear_relu", &backsub_linear_relu_cpu); }

}  // namespace gls
