// CPU kernel of gls::backsub_conv_relu: back-substitution of windowed rows through a convolution and
// the ReLU feeding it (definition: gls/reference/bound_ops.py; geometry: conv_windows.h).
//
// Design: a task takes a block of rows of one member, copies the coefficients of those that are not
// all zero next to each other, channel-major (zero rows get a zero window and constant), and gets all
// their columns from one GEMM (blocking.h's Gemm: oneDNN or BLAS on raw blocks,
// single-threaded inside our parallel region); the fold and the ReLU epilogue then run per row while
// its block is in cache. The epilogue reads the lines straight from the maps at the window's origin
// (zero outside the map), one contiguous span per window row, so no window of the lines is ever
// materialised. With keep_window it also writes the folded window g (zero outside the map) for the backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "conv_windows.h"

namespace gls {
namespace {

using at::Tensor;

template <typename T>
void forward_impl(const BacksubConvShape& s, const T* lam, const T* W, const T* b, const T* a_l, const T* c_l,
                  const T* a_u, const T* c_u, const int64_t* origin, T* out, T* bias, T* window) {
  const Geometry g(s);
  // blocks of at most block_rows rows, and at least tasks_per_member of them where the rows allow
  const int64_t per_member = s.B * s.R, want = tasks_per_member(s.P);
  const int64_t block = std::clamp<int64_t>((per_member + want - 1) / want, 1, block_rows(g, s.c_out, sizeof(T)));
  const int64_t blocks = (per_member + block - 1) / block, capacity = Gemm::leading_up(block * g.hw);
  const Gemm gemm;
  parallel_tasks(s.P * blocks, [&](const auto& next) {
    std::vector<T> lamC(capacity * s.c_out), cols(capacity * g.K), acc(g.win);
    std::vector<int64_t> kept(block);
    for (int64_t task = next(); task < s.P * blocks; task = next()) {
      const int64_t p = task / blocks, r0 = p * per_member + task % blocks * block;
      const int64_t n = std::min(block, (p + 1) * per_member - r0);
      int64_t m = 0;
      for (int64_t r = 0; r < n; ++r) {
        if (!all_zero(lam + (r0 + r) * g.lam_row, g.lam_row)) {
          kept[m++] = r;
          continue;
        }
        std::fill(out + (r0 + r) * g.win, out + (r0 + r + 1) * g.win, T(0));
        if (window != nullptr) std::fill(window + (r0 + r) * g.win, window + (r0 + r + 1) * g.win, T(0));
        bias[r0 + r] = T(0);
      }
      // cols (m*hw, K) = lamC^T W, on `rows` >= m*hw rows (those past m*hw are scratch)
      const int64_t rows = gemm.padded(m * g.hw, s.c_out * g.K, c10::CppTypeToScalarType<T>::value);
      gather_rows<T>(s, g, m, kept.data(), lam + r0 * g.lam_row, lamC.data(), rows);
      if (m > 0)
        gemm(matrix_view(cols.data(), rows, g.K, g.K), lam_view(s, g, lamC.data(), rows),
             matrix_view(W + (s.w_shared ? 0 : p) * g.filters, s.c_out, g.K, g.K));
      for (int64_t k = 0; k < m; ++k) {
        const int64_t row = r0 + kept[k], bi = row / s.R % s.B;
        const T* gwin = cols.data() + k * g.hw * g.K;  // the row's window g, folded unless cols_are_window
        if (!g.cols_are_window) {
          fold<T>(s, g, gwin, acc.data());
          gwin = acc.data();
        }
        T total = b != nullptr ? bias_term<T>(s, g, lam + row * g.lam_row, b + (s.b_shared ? 0 : p) * s.c_out) : T(0);
        const int64_t oy = origin[2 * row], ox = origin[2 * row + 1];
        const int64_t roff = ((s.relax_shared ? 0 : p) * s.B + bi) * g.map;  // the row's line maps
        total += relax_window<T>(s, oy, ox, gwin, a_l + roff, c_l + roff, a_u + roff, c_u + roff,
                                 out + row * g.win, window != nullptr ? window + row * g.win : nullptr);
        bias[row] = total;
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> backsub_conv_relu_cpu(const Tensor& lam, const Tensor& W,
                                                         const c10::optional<Tensor>& b, const Tensor& a_l,
                                                         const Tensor& c_l, const Tensor& a_u, const Tensor& c_u,
                                                         const Tensor& origin, at::IntArrayRef stride,
                                                         at::IntArrayRef dilation, bool keep_window) {
  const BacksubConvShape s =
      check_backsub_conv(c10::DeviceType::CPU, lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation);
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous(), oc = origin.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor out = at::empty({s.P, s.B, s.R, s.c_in, s.h2, s.w2}, lamc.options());
  Tensor bias = at::empty({s.P, s.B, s.R}, lamc.options());
  Tensor window = keep_window ? at::empty(out.sizes(), lamc.options()) : at::empty({0}, lamc.options());
  if (bias.numel() == 0) return {out, bias, window};
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_conv_relu_cpu", [&] {
    forward_impl<scalar_t>(s, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
                           bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, alc.const_data_ptr<scalar_t>(),
                           clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(),
                           cuc.const_data_ptr<scalar_t>(), oc.const_data_ptr<int64_t>(),
                           out.mutable_data_ptr<scalar_t>(), bias.mutable_data_ptr<scalar_t>(),
                           keep_window ? window.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {out, bias, window};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("backsub_conv_relu", &backsub_conv_relu_cpu); }

}  // namespace gls
