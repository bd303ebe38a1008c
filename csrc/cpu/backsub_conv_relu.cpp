// CPU kernels of gls::backsub_conv_relu and gls::backsub_conv_relu_backward: back-substitution of
// windowed rows through a convolution and the ReLU feeding it (definition: gls/reference/bound_ops.py).
//
// Design: a task owns rows. A row's transposed convolution is accumulated by scattering each non-zero
// coefficient of its window times one filter tap into a small channels-last buffer (C_in innermost,
// contiguous in the pre-transposed filter Wt (C_out, kh, kw, C_in)): the first step of a refinement,
// whose rows are one-hot, costs one filter per row, and zeros cost nothing. The epilogue reads the ReLU
// lines straight from the maps at the window's origin (zero outside the map), so no window of the lines
// is ever materialised. The backward recomputes the transposed convolution per row (it is never stored),
// walks the rows of one (member, sample) in order so the line gradients need no atomics, and sums the
// filter gradient per (member, block of samples) task in a fixed order: results do not depend on the
// thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "gls/bound_checks.h"
#include "vectorize.h"
#include "blocking.h"

namespace gls {
namespace {

using at::Tensor;

// cols (hw, K) = lam_row^T W: lam_row (C_out, hw), W (C_out, K); zero coefficients cost nothing.
template <typename T>
GLS_SIMD_CLONES __attribute__((noinline)) void columns(int64_t c_out, int64_t hw, int64_t K, const T* __restrict__ lam_row,
                                                       const T* __restrict__ W, T* __restrict__ cols) {
  std::fill(cols, cols + hw * K, T(0));
  for (int64_t co = 0; co < c_out; ++co)
    for (int64_t q = 0; q < hw; ++q) {
      const T v = lam_row[co * hw + q];
      if (v == T(0)) continue;
      const T* __restrict__ w = W + co * K;
      T* __restrict__ c = cols + q * K;
      for (int64_t k = 0; k < K; ++k) c[k] += v * w[k];
    }
}

// Per row of the backward, from the columns dcols (hw, K) of dg: d_lam (C_out, hw) = W dcols^T + h b, and
// dW (C_out, K) += lam_row dcols. The dot products run in kLanes partial sums (fixed order).
template <typename T>
GLS_SIMD_CLONES __attribute__((noinline)) void columns_backward(int64_t c_out, int64_t hw, int64_t K,
                                                                const T* __restrict__ lam_row, const T* __restrict__ W,
                                                                const T* __restrict__ dcols, T hb_scale,
                                                                const T* __restrict__ b, T* __restrict__ d_lam,
                                                                T* __restrict__ dW) {
  for (int64_t co = 0; co < c_out; ++co) {
    const T* __restrict__ w = W + co * K;
    T* __restrict__ dw = dW + co * K;
    for (int64_t q = 0; q < hw; ++q) {
      const T* __restrict__ c = dcols + q * K;
      T lane[kLanes<T>] = {};
      int64_t k = 0;
      for (; k + kLanes<T> <= K; k += kLanes<T>)
        for (int64_t l = 0; l < kLanes<T>; ++l) lane[l] += c[k + l] * w[k + l];
      for (int64_t l = 0; k < K; ++k, ++l) lane[l] += c[k] * w[k];
      d_lam[co * hw + q] = lane_sum(lane) + (b != nullptr ? hb_scale * b[co] : T(0));
      const T v = lam_row[co * hw + q];
      if (v != T(0))
        for (int64_t j = 0; j < K; ++j) dw[j] += v * c[j];
    }
  }
}

// One contiguous span of a window row inside the map: o = g * (g >= 0 ? a_l : a_u); returns the sum
// of g * (g >= 0 ? c_l : c_u), in kLanes partial sums (fixed order).
template <typename T>
inline T relax_span(int64_t n, const T* __restrict__ g, const T* __restrict__ al,
                                                       const T* __restrict__ cl, const T* __restrict__ au,
                                                       const T* __restrict__ cu, T* __restrict__ o) {
  T lane[kLanes<T>] = {};
  int64_t x = 0;
  for (; x + kLanes<T> <= n; x += kLanes<T>)
    for (int64_t l = 0; l < kLanes<T>; ++l) {
      const T v = g[x + l];
      const bool pos = v >= T(0);
      o[x + l] = v * (pos ? al[x + l] : au[x + l]);
      lane[l] += v * (pos ? cl[x + l] : cu[x + l]);
    }
  for (int64_t l = 0; x < n; ++x, ++l) {
    const T v = g[x];
    const bool pos = v >= T(0);
    o[x] = v * (pos ? al[x] : au[x]);
    lane[l] += v * (pos ? cl[x] : cu[x]);
  }
  return lane_sum(lane);
}

// The transposed convolution of one row's window lam_row (C_out, h*w) into acc (C_in, h2, w2), via
// its columns cols (h*w, K = C_in*kh*kw): cols[q] = sum_co lam[co, q] W[co], then col2im.
template <typename T>
void transpose_conv_row(const BacksubConvShape& s, const T* __restrict__ lam_row, const T* __restrict__ W,
                        T* __restrict__ cols, T* __restrict__ acc) {
  const int64_t K = s.c_in * s.kh * s.kw, hw = s.h * s.w;
  columns<T>(s.c_out, hw, K, lam_row, W, cols);
  std::fill(acc, acc + s.c_in * s.h2 * s.w2, T(0));
  for (int64_t q = 0; q < hw; ++q) {
    const int64_t y0 = q / s.w * s.s0, x0 = q % s.w * s.s1;
    const T* col = cols + q * K;
    for (int64_t ci = 0; ci < s.c_in; ++ci)
      for (int64_t ky = 0; ky < s.kh; ++ky) {
        T* dst = acc + (ci * s.h2 + y0 + ky * s.d0) * s.w2 + x0;
        const T* src = col + (ci * s.kh + ky) * s.kw;
        for (int64_t kx = 0; kx < s.kw; ++kx) dst[kx * s.d1] += src[kx];
      }
  }
}

// The columns (h*w, K) of a map dg (C_in, h2, w2) read by the window's taps (im2col).
template <typename T>
void im2col_row(const BacksubConvShape& s, const T* __restrict__ dg, T* __restrict__ cols) {
  const int64_t K = s.c_in * s.kh * s.kw, hw = s.h * s.w;
  for (int64_t q = 0; q < hw; ++q) {
    const int64_t y0 = q / s.w * s.s0, x0 = q % s.w * s.s1;
    T* col = cols + q * K;
    for (int64_t ci = 0; ci < s.c_in; ++ci)
      for (int64_t ky = 0; ky < s.kh; ++ky) {
        const T* src = dg + (ci * s.h2 + y0 + ky * s.d0) * s.w2 + x0;
        T* dst = col + (ci * s.kh + ky) * s.kw;
        for (int64_t kx = 0; kx < s.kw; ++kx) dst[kx] = src[kx * s.d1];
      }
  }
}

// sum_co b[co] * sum_window lam_row[co]: the constant the convolution's bias adds to the row.
template <typename T>
T bias_term(const BacksubConvShape& s, const T* lam_row, const T* b) {
  T total = T(0);
  for (int64_t co = 0; co < s.c_out; ++co) {
    T sum = T(0);
    for (int64_t k = 0; k < s.h * s.w; ++k) sum += lam_row[co * s.h * s.w + k];
    total += sum * b[co];
  }
  return total;
}

template <typename T>
void forward_impl(const BacksubConvShape& s, const T* lam, const T* W, const T* b, const T* a_l, const T* c_l,
                  const T* a_u, const T* c_u, const int64_t* origin, T* out, T* bias) {
  const int64_t rows = s.P * s.B * s.R, win = s.c_in * s.h2 * s.w2, map = s.c_in * s.H * s.W;
  const int64_t lam_row = s.c_out * s.h * s.w, filters = s.c_out * s.kh * s.kw * s.c_in;
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(win, 1)), [&](int64_t begin, int64_t end) {
    std::vector<T> acc(win), cols(s.h * s.w * s.c_in * s.kh * s.kw);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / (s.B * s.R), bi = row / s.R % s.B;
      const T* lr = lam + row * lam_row;
      transpose_conv_row<T>(s, lr, W + (s.w_shared ? 0 : p) * filters, cols.data(), acc.data());
      T total = b != nullptr ? bias_term<T>(s, lr, b + (s.b_shared ? 0 : p) * s.c_out) : T(0);
      const int64_t oy = origin[2 * row], ox = origin[2 * row + 1];
      const int64_t roff = ((s.relax_shared ? 0 : p) * s.B + bi) * map;
      const int64_t x0 = std::clamp<int64_t>(-ox, 0, s.w2), x1 = std::clamp<int64_t>(s.W - ox, x0, s.w2);
      T* o = out + row * win;
      for (int64_t ci = 0; ci < s.c_in; ++ci)
        for (int64_t y = 0; y < s.h2; ++y) {
          T* o_row = o + (ci * s.h2 + y) * s.w2;
          const int64_t gy = oy + y;
          if (gy < 0 || gy >= s.H || x1 == x0) {  // the window row lies outside the map
            std::fill(o_row, o_row + s.w2, T(0));
            continue;
          }
          std::fill(o_row, o_row + x0, T(0));
          std::fill(o_row + x1, o_row + s.w2, T(0));
          const int64_t i = roff + (ci * s.H + gy) * s.W + ox + x0;
          total += relax_span<T>(x1 - x0, acc.data() + (ci * s.h2 + y) * s.w2 + x0, a_l + i, c_l + i, a_u + i, c_u + i,
                                 o_row + x0);
        }
      bias[row] = total;
    }
  });
}

// Backward. Outputs: d_lam (P,B,R,C_out,h,w); d_W (tasks, C_out, C_in*kh*kw) partial sums per task;
// d_b (tasks, C_out) likewise; line gradients (P,B,C_in,H,W), zero-initialised.
template <typename T>
void backward_impl(const BacksubConvShape& s, int64_t b_blocks, const T* lam, const T* W, const T* b, const T* a_l,
                   const T* c_l, const T* a_u, const T* c_u, const int64_t* origin, const T* grad_out,
                   const T* grad_bias, T* d_lam, T* d_W, T* d_b, T* d_al, T* d_cl, T* d_au, T* d_cu) {
  const int64_t win = s.c_in * s.h2 * s.w2, map = s.c_in * s.H * s.W, hw = s.h * s.w;
  const int64_t K = s.c_in * s.kh * s.kw, lam_row = s.c_out * hw, filters = s.c_out * K;
  const int64_t per_block = (s.B + b_blocks - 1) / b_blocks;
  at::parallel_for(0, s.P * b_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(win), dg(win), cols(hw * K);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / b_blocks, b0 = task % b_blocks * per_block, b1 = std::min(s.B, b0 + per_block);
      const T* W_p = W + (s.w_shared ? 0 : p) * filters;
      const T* b_p = b != nullptr ? b + (s.b_shared ? 0 : p) * s.c_out : nullptr;
      T* dW = d_W + task * filters;
      T* db = d_b != nullptr ? d_b + task * s.c_out : nullptr;
      for (int64_t bi = b0; bi < b1; ++bi)
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t row = (p * s.B + bi) * s.R + r;
          const T* lr = lam + row * lam_row;
          const T* go = grad_out + row * win;
          const T hv = grad_bias[row];
          transpose_conv_row<T>(s, lr, W_p, cols.data(), acc.data());
          const int64_t oy = origin[2 * row], ox = origin[2 * row + 1];
          const int64_t roff = ((s.relax_shared ? 0 : p) * s.B + bi) * map, goff = (p * s.B + bi) * map;
          for (int64_t ci = 0; ci < s.c_in; ++ci)
            for (int64_t y = 0; y < s.h2; ++y)
              for (int64_t x = 0; x < s.w2; ++x) {
                const int64_t e = (ci * s.h2 + y) * s.w2 + x, gy = oy + y, gx = ox + x;
                if (gy < 0 || gy >= s.H || gx < 0 || gx >= s.W) {
                  dg[e] = T(0);
                  continue;
                }
                const T g = acc[e], up = go[e];
                const int64_t m = (ci * s.H + gy) * s.W + gx, i = roff + m, j = goff + m;
                if (g >= T(0)) {
                  dg[e] = up * a_l[i] + hv * c_l[i];
                  d_al[j] += up * g;
                  d_cl[j] += hv * g;
                } else {
                  dg[e] = up * a_u[i] + hv * c_u[i];
                  d_au[j] += up * g;
                  d_cu[j] += hv * g;
                }
              }
          im2col_row<T>(s, dg.data(), cols.data());  // cols[q] = the taps of window pixel q
          columns_backward<T>(s.c_out, hw, K, lr, W_p, cols.data(), hv, b_p, d_lam + row * lam_row, dW);
          if (db != nullptr)
            for (int64_t co = 0; co < s.c_out; ++co) {
              T lam_sum = T(0);
              for (int64_t q = 0; q < hw; ++q) lam_sum += lr[co * hw + q];
              db[co] += hv * lam_sum;
            }
        }
    }
  });
}

std::tuple<Tensor, Tensor> backsub_conv_relu_cpu(const Tensor& lam, const Tensor& W, const c10::optional<Tensor>& b,
                                                 const Tensor& a_l, const Tensor& c_l, const Tensor& a_u,
                                                 const Tensor& c_u, const Tensor& origin, at::IntArrayRef stride,
                                                 at::IntArrayRef dilation) {
  const BacksubConvShape s =
      check_backsub_conv(c10::DeviceType::CPU, lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation);
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous(), oc = origin.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor out = at::empty({s.P, s.B, s.R, s.c_in, s.h2, s.w2}, lamc.options());
  Tensor bias = at::empty({s.P, s.B, s.R}, lamc.options());
  if (bias.numel() == 0) return {out, bias};
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_conv_relu_cpu", [&] {
    forward_impl<scalar_t>(s, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
                           bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, alc.const_data_ptr<scalar_t>(),
                           clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(),
                           cuc.const_data_ptr<scalar_t>(), oc.const_data_ptr<int64_t>(),
                           out.mutable_data_ptr<scalar_t>(), bias.mutable_data_ptr<scalar_t>());
  });
  return {out, bias};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backsub_conv_relu_backward_cpu(
    const Tensor& lam, const Tensor& W, const c10::optional<Tensor>& b, const Tensor& a_l, const Tensor& c_l,
    const Tensor& a_u, const Tensor& c_u, const Tensor& origin, at::IntArrayRef stride, at::IntArrayRef dilation,
    const Tensor& grad_lam, const Tensor& grad_bias) {
  const char* op = "backsub_conv_relu_backward";
  const BacksubConvShape s =
      check_backsub_conv(c10::DeviceType::CPU, lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation);
  TORCH_CHECK(grad_lam.sizes() == at::IntArrayRef({s.P, s.B, s.R, s.c_in, s.h2, s.w2}), op,
              ": grad_lam must have the shape of the op's first output, got ", grad_lam.sizes());
  TORCH_CHECK(grad_bias.sizes() == at::IntArrayRef({s.P, s.B, s.R}), op, ": grad_bias must have shape (P,B,R), got ",
              grad_bias.sizes());
  check_tensors(op, c10::DeviceType::CPU, {{"lam", &lam}, {"grad_lam", &grad_lam}, {"grad_bias", &grad_bias}});
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous(), oc = origin.contiguous(), go = grad_lam.contiguous(),
               gb = grad_bias.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  // tasks = (member, block of samples); at least 16 in all when the batch allows, fixed (not per thread)
  const int64_t b_blocks = std::clamp<int64_t>(16 / std::max<int64_t>(s.P, 1), 1, std::max<int64_t>(s.B, 1));
  const auto opts = lamc.options();
  Tensor d_lam = at::empty(lamc.sizes(), opts);
  Tensor d_W = at::zeros({s.P, b_blocks, s.c_out, s.c_in, s.kh, s.kw}, opts);
  Tensor d_b = at::zeros({s.P, b_blocks, s.c_out}, opts);
  const std::vector<int64_t> maps{s.P, s.B, s.c_in, s.H, s.W};
  Tensor d_al = at::zeros(maps, opts), d_cl = at::zeros(maps, opts), d_au = at::zeros(maps, opts),
         d_cu = at::zeros(maps, opts);
  if (lamc.numel() > 0 && s.c_in * s.h2 * s.w2 > 0) {
    AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_conv_relu_backward_cpu", [&] {
      backward_impl<scalar_t>(
          s, b_blocks, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
          bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, alc.const_data_ptr<scalar_t>(),
          clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(), cuc.const_data_ptr<scalar_t>(),
          oc.const_data_ptr<int64_t>(), go.const_data_ptr<scalar_t>(), gb.const_data_ptr<scalar_t>(),
          d_lam.mutable_data_ptr<scalar_t>(), d_W.mutable_data_ptr<scalar_t>(),
          bc.defined() ? d_b.mutable_data_ptr<scalar_t>() : nullptr, d_al.mutable_data_ptr<scalar_t>(),
          d_cl.mutable_data_ptr<scalar_t>(), d_au.mutable_data_ptr<scalar_t>(), d_cu.mutable_data_ptr<scalar_t>());
    });
  } else {
    d_lam.zero_();
  }
  return {d_lam, d_W.sum(1), bc.defined() ? d_b.sum(1) : at::zeros({0}, opts), d_al, d_cl, d_au, d_cu};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) {
  m.impl("backsub_conv_relu", &backsub_conv_relu_cpu);
  m.impl("backsub_conv_relu_backward", &backsub_conv_relu_backward_cpu);
}

}  // namespace gls
