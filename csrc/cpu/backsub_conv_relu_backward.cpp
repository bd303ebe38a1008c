// CPU kernel of gls::backsub_conv_relu_backward, the closed-form backward of backsub_conv_relu (maths in
// gls/meta/backsub_conv_relu.py; geometry: conv_windows.h).
//
// Design: the forward kept each row's window g (keep_window), so nothing is recomputed: dg = G A + h C
// is formed per row over the spans inside the map and unfolded (im2col), and d_lam = dcols W^T and the
// filter gradient lam dcols come from two GEMMs per block of rows. Rows whose coefficients and upstream
// gradients are all zero (padding rows) are left out of the block: their d_lam is zero. A task walks
// the rows of its (member, block of samples) in order, so the line gradients need no atomics, and sums
// its filter gradient in a fixed order: results do not depend on the thread count. A batch too small
// for enough tasks (B = 1: one task, one busy thread) splits each sample's rows into row blocks instead,
// each with its own line-gradient maps, summed after in a fixed order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "conv_windows.h"

namespace gls {
namespace {

using at::Tensor;

// relax_window_backward over one span of n values (N where N > 0, a compile-time width; with_span_width).
template <typename T, bool kUp, bool kLines, int64_t N>
inline void span_backward(int64_t n, const T* __restrict__ g, const T* __restrict__ up, T h, const T* __restrict__ al,
                          const T* __restrict__ cl, const T* __restrict__ au, const T* __restrict__ cu,
                          T* __restrict__ dg, T* __restrict__ d_al, T* __restrict__ d_cl, T* __restrict__ d_au,
                          T* __restrict__ d_cu) {
  for (int64_t x = 0; x < (N > 0 ? N : n); ++x) {
    const T v = g[x];
    if constexpr (kLines) {
      const T u = kUp ? up[x] : T(0), pos = select_positive(v, v, T(0)), neg = v - pos;
      if constexpr (kUp) {
        d_al[x] += u * pos;
        d_au[x] += u * neg;
      }
      d_cl[x] += h * pos;
      d_cu[x] += h * neg;
    }
    T on_pos = h * cl[x], on_neg = h * cu[x];
    if constexpr (kUp) {
      on_pos += up[x] * al[x];
      on_neg += up[x] * au[x];
    }
    dg[x] = select_positive(v, on_pos, on_neg, true);
  }
}

// One row's ReLU epilogue backward over its window g (C_in, h2, w2) at (oy, ox) of the map: dg = up * A
// + h * C inside the map (A, C the lines g's sign selects: the lower where g >= 0) and 0 outside; with
// kLines the line gradients up*g and h*g go to the selected line's gradient map, as the sign split of g
// (gls/bound_ops.h). kUp: whether lam' has an upstream gradient `up` (else it is 0: a concretisation).
// Lines and gradient maps: those (C_in, H, W) of the row's (member, sample). N: the rows' span width where
// known at compile time (with_span_width). Branch-free, one call per row, compiled for every vector width.
template <typename T, bool kUp, bool kLines, int64_t N>
GLS_SIMD_CLONES __attribute__((noinline)) void relax_window_backward(
    const BacksubConvShape& s, int64_t oy, int64_t ox, const T* __restrict__ g, const T* __restrict__ up, T h,
    const T* __restrict__ al, const T* __restrict__ cl, const T* __restrict__ au, const T* __restrict__ cu,
    T* __restrict__ dg, T* __restrict__ d_al, T* __restrict__ d_cl, T* __restrict__ d_au, T* __restrict__ d_cu) {
  const Span sp = span_of(s, ox);
  std::fill(dg, dg + s.c_in * s.h2 * s.w2, T(0));
  for (int64_t ci = 0; ci < s.c_in; ++ci)
    for (int64_t y = 0; y < s.h2; ++y) {
      if (!sp.inside(oy + y, s.H)) continue;
      const int64_t e = (ci * s.h2 + y) * s.w2 + sp.x0, m = (ci * s.H + oy + y) * s.W + ox + sp.x0;
      span_backward<T, kUp, kLines, N>(sp.x1 - sp.x0, g + e, kUp ? up + e : nullptr, h, al + m, cl + m, au + m, cu + m,
                                       dg + e, kLines ? d_al + m : nullptr, kLines ? d_cl + m : nullptr,
                                       kLines ? d_au + m : nullptr, kLines ? d_cu + m : nullptr);
    }
}

// relax_window_backward for a run-time choice of kUp (up != nullptr), kLines (d_al != nullptr) and the
// span width of the row at origin column ox.
template <typename T, typename... Args>
void relax_window_backward_for(const T* up, const T* d_al, const BacksubConvShape& s, int64_t oy, int64_t ox,
                               Args&&... args) {
  const Span sp = span_of(s, ox);
  with_span_width(sp.x1 - sp.x0, [&]<int64_t N>() {
    const auto row = up != nullptr ? (d_al != nullptr ? relax_window_backward<T, true, true, N>
                                                      : relax_window_backward<T, true, false, N>)
                                   : (d_al != nullptr ? relax_window_backward<T, false, true, N>
                                                      : relax_window_backward<T, false, false, N>);
    row(s, oy, ox, args...);
  });
}

// How the backward's rows go to tasks, fixed by the shapes (not the threads): per member, b_blocks blocks of
// samples, and with r_blocks > 1 (then b_blocks = B) each sample's rows in r_blocks blocks.
struct TaskSplit {
  int64_t b_blocks, r_blocks;
  int64_t per_member() const { return b_blocks * r_blocks; }
};

// tasks_per_member tasks where the rows allow: by blocks of samples while the batch gives them, else by rows.
TaskSplit task_split(const BacksubConvShape& s) {
  const int64_t want = tasks_per_member(s.P), B = std::max<int64_t>(s.B, 1);
  if (B >= want) return {want, 1};
  return {B, std::clamp<int64_t>(want / B, 1, std::max<int64_t>(s.R, 1))};
}

// Backward. Outputs: d_lam (P,B,R,C_out,h,w) or null (not asked); d_W (tasks, C_out, C_in*kh*kw) partial
// sums per task; d_b (tasks, C_out) likewise; line gradients (r_blocks,P,B,C_in,H,W), zero-initialised, or
// null. grad_out null: lam' has no upstream gradient.
template <typename T>
void backward_impl(const BacksubConvShape& s, TaskSplit split, const T* lam, const T* W, const T* b, const T* a_l,
                   const T* c_l, const T* a_u, const T* c_u, const int64_t* origin, const T* window, const T* grad_out,
                   const T* grad_bias, T* d_lam, T* d_W, T* d_b, T* d_al, T* d_cl, T* d_au, T* d_cu) {
  const Geometry g(s);
  const int64_t per_block = (s.B + split.b_blocks - 1) / split.b_blocks, block = block_rows(g, s.c_out, sizeof(T));
  const int64_t per_rows = (s.R + split.r_blocks - 1) / split.r_blocks, maps = s.P * s.B * g.map;
  const int64_t capacity = Gemm::leading_up(block * g.hw);  // columns of lamC and dlamC, rows of dcols
  const int64_t tasks = s.P * split.per_member();
  const Gemm gemm;
  parallel_tasks(tasks, [&](const auto& next) {
    std::vector<T> lamC(capacity * s.c_out), dcols(capacity * g.K), dlamC(capacity * s.c_out), dg(g.win);
    std::vector<int64_t> kept(block);
    for (int64_t task = next(); task < tasks; task = next()) {
      const int64_t p = task / split.per_member(), part = task % split.per_member();
      const int64_t bb = part / split.r_blocks, rb = part % split.r_blocks;
      const int64_t b0 = std::min(s.B, bb * per_block), b1 = std::min(s.B, b0 + per_block);
      int64_t first = (p * s.B + b0) * s.R, last = (p * s.B + b1) * s.R;
      if (split.r_blocks > 1) {  // one sample (b1 = b0 + 1), rows [rb * per_rows, ...) of it
        last = std::min(last, first + (rb + 1) * per_rows);
        first = std::min(last, first + rb * per_rows);
      }
      const int64_t lines_at = rb * maps;  // this row block's line-gradient maps
      const T* W_p = W + (s.w_shared ? 0 : p) * g.filters;
      const T* b_p = b != nullptr ? b + (s.b_shared ? 0 : p) * s.c_out : nullptr;
      const at::Tensor dW = matrix_view(d_W + task * g.filters, s.c_out, g.K, g.K);
      T* db = d_b != nullptr ? d_b + task * s.c_out : nullptr;
      for (int64_t r0 = first; r0 < last; r0 += block) {
        const int64_t n = std::min(block, last - r0);
        int64_t m = 0;  // rows with zero coefficients and zero upstream gradients contribute nothing
        for (int64_t r = 0; r < n; ++r) {
          const int64_t row = r0 + r;
          if (!all_zero(lam + row * g.lam_row, g.lam_row) ||
              (grad_out != nullptr && !all_zero(grad_out + row * g.win, g.win)) || grad_bias[row] != T(0)) {
            kept[m++] = r;
            continue;
          }
          if (d_lam != nullptr) std::fill(d_lam + row * g.lam_row, d_lam + (row + 1) * g.lam_row, T(0));
        }
        // the GEMMs below run on `cols` >= m*hw columns of lamC and rows of dcols
        const int64_t used = m * g.hw, cols = gemm.padded(used, s.c_out * g.K, c10::CppTypeToScalarType<T>::value);
        gather_rows<T>(s, g, m, kept.data(), lam + r0 * g.lam_row, lamC.data(), cols);
        for (int64_t k = 0; k < m; ++k) {
          const int64_t row = r0 + kept[k], bi = row / s.R % s.B;
          const T* go = grad_out != nullptr ? grad_out + row * g.win : nullptr;
          const T hv = grad_bias[row];
          const T* gw = window + row * g.win;
          const int64_t oy = origin[2 * row], ox = origin[2 * row + 1];
          const int64_t roff = ((s.relax_shared ? 0 : p) * s.B + bi) * g.map, goff = (p * s.B + bi) * g.map;
          const bool lines = d_al != nullptr;
          T* dcol = dcols.data() + k * g.hw * g.K;  // dg goes straight to the row's columns if cols_are_window
          relax_window_backward_for<T>(go, d_al, s, oy, ox, gw, go, hv, a_l + roff, c_l + roff, a_u + roff, c_u + roff,
                                       g.cols_are_window ? dcol : dg.data(), lines ? d_al + lines_at + goff : nullptr,
                                       lines ? d_cl + lines_at + goff : nullptr,
                                       lines ? d_au + lines_at + goff : nullptr,
                                       lines ? d_cu + lines_at + goff : nullptr);
          if (!g.cols_are_window) unfold<T>(s, g, dg.data(), dcol);
          if (db != nullptr) {
            const T* lr = lam + row * g.lam_row;
            for (int64_t co = 0; co < s.c_out; ++co) db[co] += hv * lane_total(lr + co * g.hw, g.hw);
          }
        }
        if (m == 0) continue;
        // dW (C_out, K) += lamC dcols; dlamC (C_out, m*hw) = W dcols^T in lamC's layout (gather_rows), copied
        // out per (row, channel). lamC and dcols are zero past m*hw (dlamC is scratch there).
        std::fill(dcols.data() + used * g.K, dcols.data() + cols * g.K, T(0));
        zero_padding(s, g, lamC.data(), used, cols);
        const at::Tensor dcolsv = matrix_view(dcols.data(), cols, g.K, g.K);
        gemm(dW, lam_view(s, g, lamC.data(), cols).t(), dcolsv, true);
        if (d_lam == nullptr) continue;
        if (g.hw == 1)  // as dlamC^T = dcols W^T: oneDNN writes a transposed destination with its slow reference code
          gemm(lam_view(s, g, dlamC.data(), cols), dcolsv, matrix_view(W_p, s.c_out, g.K, g.K).t());
        else
          gemm(matrix_view(dlamC.data(), s.c_out, cols, cols), matrix_view(W_p, s.c_out, g.K, g.K), dcolsv.t());
        for (int64_t k = 0; k < m; ++k) {
          const T hb = grad_bias[r0 + kept[k]];
          T* dl = d_lam + (r0 + kept[k]) * g.lam_row;
          for (int64_t co = 0; co < s.c_out; ++co) {
            const T* src = lam_at(s, g, dlamC.data(), cols, k, co, 0);
            const T add = b_p != nullptr ? hb * b_p[co] : T(0);
            for (int64_t q = 0; q < g.hw; ++q) dl[co * g.hw + q] = src[q] + add;
          }
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backsub_conv_relu_backward_cpu(
    const Tensor& lam, const Tensor& W, const c10::optional<Tensor>& b, const Tensor& a_l, const Tensor& c_l,
    const Tensor& a_u, const Tensor& c_u, const Tensor& origin, at::IntArrayRef stride, at::IntArrayRef dilation,
    const Tensor& window, const Tensor& grad_lam, const Tensor& grad_bias, bool lam_grad, bool line_grads) {
  const BacksubConvShape s =
      check_backsub_conv(c10::DeviceType::CPU, lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation);
  check_backsub_conv_grads(c10::DeviceType::CPU, s, lam, window, grad_lam, grad_bias);
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous(), oc = origin.contiguous(), wc = window.contiguous(),
               go = grad_lam.contiguous(), gb = grad_bias.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  const TaskSplit split = task_split(s);
  const auto opts = lamc.options();
  const bool rows = lamc.numel() > 0 && s.c_in * s.h2 * s.w2 > 0, up = go.numel() > 0;
  const auto none = [&opts]() { return at::empty({0}, opts); };  // a fresh one per output: outputs may not alias
  // the kernel writes every row of d_lam
  Tensor d_lam = !lam_grad ? none() : rows ? at::empty(lamc.sizes(), opts) : at::zeros(lamc.sizes(), opts);
  Tensor d_W = at::zeros({s.P, split.per_member(), s.c_out, s.c_in, s.kh, s.kw}, opts);
  Tensor d_b = at::zeros({s.P, split.per_member(), s.c_out}, opts);
  const std::vector<int64_t> maps{split.r_blocks, s.P, s.B, s.c_in, s.H, s.W};
  Tensor d_al = line_grads ? at::zeros(maps, opts) : none(), d_cl = line_grads ? at::zeros(maps, opts) : none(),
         d_au = line_grads ? at::zeros(maps, opts) : none(), d_cu = line_grads ? at::zeros(maps, opts) : none();
  if (rows) {
    AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_conv_relu_backward_cpu", [&] {
      const auto out = [](Tensor& t) { return t.numel() > 0 ? t.mutable_data_ptr<scalar_t>() : nullptr; };
      backward_impl<scalar_t>(
          s, split, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
          bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, alc.const_data_ptr<scalar_t>(),
          clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(), cuc.const_data_ptr<scalar_t>(),
          oc.const_data_ptr<int64_t>(), wc.const_data_ptr<scalar_t>(), up ? go.const_data_ptr<scalar_t>() : nullptr,
          gb.const_data_ptr<scalar_t>(), out(d_lam), d_W.mutable_data_ptr<scalar_t>(),
          bc.defined() ? d_b.mutable_data_ptr<scalar_t>() : nullptr, out(d_al), out(d_cl), out(d_au), out(d_cu));
    });
  }
  const auto lines = [](const Tensor& t) {  // summed over the row blocks
    return t.numel() == 0 ? t : t.size(0) == 1 ? t.squeeze(0) : t.sum(0);
  };
  const Tensor d_bias = bc.defined() ? d_b.sum(1) : at::zeros({0}, opts);
  return {d_lam, d_W.sum(1), d_bias, lines(d_al), lines(d_cl), lines(d_au), lines(d_cu)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("backsub_conv_relu_backward", &backsub_conv_relu_backward_cpu); }

}  // namespace gls
