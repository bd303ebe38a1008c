// Window geometry of the CPU kernels of backsub_conv_relu and its backward (csrc/cpu/backsub_conv_relu.cpp,
// backsub_conv_relu_backward.cpp): a row's transposed convolution is its columns cols (h*w, K =
// C_in*kh*kw) = lam_row^T W, folded back onto the (C_in, h', w') window (col2im); a block of rows gets
// its columns from one BLAS GEMM; the ReLU epilogue runs over the contiguous span of each window row
// that lies inside the map. The backward unfolds (im2col) the window's gradient the same way.
#pragma once

#include <algorithm>
#include <cstdint>

#include "gls/bound_checks.h"
#include "blocking.h"

namespace gls {

struct Geometry {  // sizes of one call, in elements
  int64_t hw, K, win, map, lam_row, filters;
  explicit Geometry(const BacksubConvShape& s)
      : hw(s.h * s.w),
        K(s.c_in * s.kh * s.kw),
        win(s.c_in * s.h2 * s.w2),
        map(s.c_in * s.H * s.W),
        lam_row(s.c_out * s.h * s.w),
        filters(s.c_out * s.c_in * s.kh * s.kw) {}
};

// Rows per GEMM block: its transposed coefficients, columns and unfolded gradient stay in L2.
inline int64_t block_rows(const Geometry& g, int64_t c_out, int64_t elem) {
  const int64_t per_row = std::max<int64_t>(1, g.hw * (2 * g.K + c_out) * elem);
  return std::clamp<int64_t>((int64_t(256) << 10) / per_row, 1, 512);
}

// Whether n values are all exactly zero (NaN is not): such a row's window is zero, so the kernels
// skip it (the padding rows of ragged per-sample row sets, gls/bounds.py, are such rows).
template <typename T>
inline bool all_zero(const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (x[i] != T(0)) return false;
  return true;
}

// lamT (m*hw, C_out): the transposes of the rows kept[0..m) of a block (each (C_out, hw) at
// lam_rows + kept[i] * lam_row), the left operand of the columns' GEMM and of the filter gradient's.
template <typename T>
void transpose_rows(const BacksubConvShape& s, const Geometry& g, int64_t m, const int64_t* kept, const T* lam_rows,
                    T* lamT) {
  for (int64_t r = 0; r < m; ++r) {
    const T* row = lam_rows + kept[r] * g.lam_row;
    for (int64_t co = 0; co < s.c_out; ++co)
      for (int64_t q = 0; q < g.hw; ++q) lamT[(r * g.hw + q) * s.c_out + co] = row[co * g.hw + q];
  }
}

// acc (C_in, h2, w2) = the fold (col2im) of one row's columns (hw, K).
template <typename T>
void fold(const BacksubConvShape& s, const Geometry& g, const T* __restrict__ cols, T* __restrict__ acc) {
  std::fill(acc, acc + g.win, T(0));
  for (int64_t q = 0; q < g.hw; ++q) {
    const int64_t y0 = q / s.w * s.s0, x0 = q % s.w * s.s1;
    const T* col = cols + q * g.K;
    for (int64_t ci = 0; ci < s.c_in; ++ci)
      for (int64_t ky = 0; ky < s.kh; ++ky) {
        T* dst = acc + (ci * s.h2 + y0 + ky * s.d0) * s.w2 + x0;
        const T* src = col + (ci * s.kh + ky) * s.kw;
        for (int64_t kx = 0; kx < s.kw; ++kx) dst[kx * s.d1] += src[kx];
      }
  }
}

// The columns (hw, K) that the window's taps read from a map dg (C_in, h2, w2) (im2col).
template <typename T>
void unfold(const BacksubConvShape& s, const Geometry& g, const T* __restrict__ dg, T* __restrict__ cols) {
  for (int64_t q = 0; q < g.hw; ++q) {
    const int64_t y0 = q / s.w * s.s0, x0 = q % s.w * s.s1;
    T* col = cols + q * g.K;
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
T bias_term(const BacksubConvShape& s, const Geometry& g, const T* lam_row, const T* b) {
  T total = T(0);
  for (int64_t co = 0; co < s.c_out; ++co) {
    T sum = T(0);
    for (int64_t q = 0; q < g.hw; ++q) sum += lam_row[co * g.hw + q];
    total += sum * b[co];
  }
  return total;
}

// The part [x0, x1) of window row x that lies inside the map (columns ox + x), and whether row gy does.
struct Span {
  int64_t x0, x1;
  bool inside(int64_t gy, int64_t H) const { return gy >= 0 && gy < H && x1 > x0; }
};

inline Span span_of(const BacksubConvShape& s, int64_t ox) {
  const int64_t x0 = std::clamp<int64_t>(-ox, 0, s.w2);
  return {x0, std::clamp<int64_t>(s.W - ox, x0, s.w2)};
}

// o = g * (g >= 0 ? a_l : a_u) over one span; returns sum g * (g >= 0 ? c_l : c_u).
template <typename T>
inline T relax_span(int64_t n, const T* __restrict__ g, const T* __restrict__ al, const T* __restrict__ cl,
                    const T* __restrict__ au, const T* __restrict__ cu, T* __restrict__ o) {
  T total = T(0);
  for (int64_t x = 0; x < n; ++x) {
    const bool pos = g[x] >= T(0);
    o[x] = g[x] * (pos ? al[x] : au[x]);
    total += g[x] * (pos ? cl[x] : cu[x]);
  }
  return total;
}

}  // namespace gls
