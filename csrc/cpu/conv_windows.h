// Window geometry of the CPU kernels of backsub_conv_relu and its backward (csrc/cpu/backsub_conv_relu.cpp,
// backsub_conv_relu_backward.cpp): a row's transposed convolution is its columns cols (h*w, K =
// C_in*kh*kw) = lam_row^T W, folded back onto the (C_in, h', w') window (col2im); a block of rows gets
// its columns from one GEMM (blocking.h); the ReLU epilogue runs over the contiguous span of each window row
// that lies inside the map. The backward unfolds (im2col) the window's gradient the same way.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "gls/bound_checks.h"
#include "vectorize.h"  // before the math headers: lets their branch-free selects vectorise
#include "gls/bound_ops.h"
#include "blocking.h"

namespace gls {

struct Geometry {  // sizes of one call, in elements
  int64_t hw, K, win, map, lam_row, filters;
  bool cols_are_window;  // 1x1 rows, undilated: the row's one column is its window (fold and unfold copy)
  explicit Geometry(const BacksubConvShape& s)
      : hw(s.h * s.w),
        K(s.c_in * s.kh * s.kw),
        win(s.c_in * s.h2 * s.w2),
        map(s.c_in * s.H * s.W),
        lam_row(s.c_out * s.h * s.w),
        filters(s.c_out * s.c_in * s.kh * s.kw),
        cols_are_window(hw == 1 && s.d0 == 1 && s.d1 == 1) {}
};

// Tasks per member a kernel call aims for where the rows allow: about 16 over the P members, at least one
// each (a call at P = B = 1 was one task on one thread). Fixed by the shapes, not the threads, so results
// do not depend on the thread count.
inline int64_t tasks_per_member(int64_t P) { return std::max<int64_t>(1, 16 / std::max<int64_t>(P, 1)); }

// Rows per GEMM block: its transposed coefficients, columns and unfolded gradient take about 2 MB, in L2
// and L3. Measured on trained cnn3 (2 threads, AMD EPYC): 2 MB blocks gave oneDNN's GEMMs (blocking.h)
// enough rows to pay off, 10-20% faster DeepPoly passes than the 256 KB blocks sized for L2 alone.
inline int64_t block_rows(const Geometry& g, int64_t c_out, int64_t elem) {
  const int64_t per_row = std::max<int64_t>(1, g.hw * (2 * g.K + c_out) * elem);
  return std::clamp<int64_t>((int64_t(2) << 20) / per_row, 1, 512);
}

// Whether n values are all exactly zero (-0 included, NaN not): such a row's window is zero, so the
// kernels skip it (the padding rows of ragged per-sample row sets, gls/bounds.py, are such rows). The
// bits of each chunk are OR-ed without a branch (the sign bit shifted out), so the test vectorises.
template <typename T>
inline bool all_zero(const T* x, int64_t n) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  for (int64_t i = 0; i < n; i += 64) {
    Bits any = 0;
    for (int64_t j = i; j < std::min<int64_t>(n, i + 64); ++j) {
      Bits b;
      std::memcpy(&b, x + j, sizeof b);
      any |= b << 1;
    }
    if (any != 0) return false;
  }
  return true;
}

// v > 0 ? a : b (v >= 0 ? a : b with or_zero) through a bit mask. As ternaries, GCC branches in the scalar
// loops of the short window spans, where the sign of v is random (a mispredicted branch every other
// element). positive_part(v) is select_positive(v, v, 0).
template <typename T>
inline T select_positive(T v, T a, T b, bool or_zero = false) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits ba, bb;
  std::memcpy(&ba, &a, sizeof a);
  std::memcpy(&bb, &b, sizeof b);
  const Bits mask = Bits(0) - Bits(or_zero ? v >= T(0) : v > T(0)), bits = (ba & mask) | (bb & ~mask);
  T out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// lamC: the rows kept[0..m) of a block (each (C_out, hw) at lam_rows + kept[i] * lam_row) side by side,
// channel-major (C_out, n) for the GEMMs' n >= m*hw rows, so each (row, channel) is one contiguous copy;
// for 1x1 rows (hw = 1) row-major (n, C_out) instead, one contiguous copy per row (channel-major would
// write single values n apart: measured, a sixth of the backward kernel's own time on cnn3's DeepPoly
// refinement). The GEMMs read it through lam_view. n is the padded row count (blocking.h's Gemm), not the
// block's capacity: torch's mkldnn_matmul copies an operand first unless it is contiguous or exactly
// transposed, and the strides then take no more values than the shapes do.
template <typename T>
void gather_rows(const BacksubConvShape& s, const Geometry& g, int64_t m, const int64_t* kept, const T* lam_rows,
                 T* lamC, int64_t n) {
  for (int64_t r = 0; r < m; ++r) {
    const T* row = lam_rows + kept[r] * g.lam_row;
    if (g.hw == 1) {
      for (int64_t co = 0; co < s.c_out; ++co) lamC[r * s.c_out + co] = row[co];
      continue;
    }
    for (int64_t co = 0; co < s.c_out; ++co)
      for (int64_t q = 0; q < g.hw; ++q) lamC[co * n + r * g.hw + q] = row[co * g.hw + q];  // short: no memmove call
  }
}

// lamC, or dlamC laid out the same way, as the (n, C_out) matrix lamC^T.
template <typename T>
at::Tensor lam_view(const BacksubConvShape& s, const Geometry& g, const T* lamC, int64_t n) {
  return g.hw == 1 ? matrix_view(lamC, n, s.c_out, s.c_out) : matrix_view(lamC, s.c_out, n, n).t();
}

// Zeroes lamC^T's rows [used, n) (a GEMM's padding rows) in gather_rows' layout.
template <typename T>
void zero_padding(const BacksubConvShape& s, const Geometry& g, T* lamC, int64_t used, int64_t n) {
  if (g.hw == 1) {
    std::fill(lamC + used * s.c_out, lamC + n * s.c_out, T(0));
    return;
  }
  for (int64_t co = 0; co < s.c_out; ++co) std::fill(lamC + co * n + used, lamC + (co + 1) * n, T(0));
}

// Element (row k, channel co, position q) of lamC or dlamC.
template <typename T>
T* lam_at(const BacksubConvShape& s, const Geometry& g, T* lamC, int64_t n, int64_t k, int64_t co, int64_t q) {
  return g.hw == 1 ? lamC + k * s.c_out + co : lamC + co * n + k * g.hw + q;
}

// Runs f.template operator()<N>() with N = n where 1 <= n <= Max, else N = 0 (n known only at run time).
template <int64_t Max, typename F>
void with_constant(int64_t n, F&& f) {
  [&]<int64_t... I>(std::integer_sequence<int64_t, I...>) {
    if (!((n == I + 1 && (f.template operator()<I + 1>(), true)) || ...)) f.template operator()<0>();
  }(std::make_integer_sequence<int64_t, Max>{});
}

// Runs f.template operator()<KW>() with KW = kw for the common kernel widths 1-7 at unit horizontal
// dilation, else KW = 0 (run-time width and dilation). fold and unfold move one kw-wide run of taps at a
// time; a compile-time width turns the run into a few vector instructions instead of a short loop.
template <typename F>
void with_tap_width(const BacksubConvShape& s, F&& f) {
  with_constant<7>(s.d1 == 1 ? s.kw : 0, f);
}

// acc (C_in, h2, w2) = the fold (col2im) of one row's columns (hw, K).
template <typename T>
void fold(const BacksubConvShape& s, const Geometry& g, const T* __restrict__ cols, T* __restrict__ acc) {
  std::fill(acc, acc + g.win, T(0));
  with_tap_width(s, [&]<int64_t KW>() {
    const int64_t kw = KW > 0 ? KW : s.kw, d1 = KW > 0 ? 1 : s.d1;
    for (int64_t q = 0; q < g.hw; ++q) {
      const int64_t y0 = q / s.w * s.s0, x0 = q % s.w * s.s1;
      const T* col = cols + q * g.K;
      for (int64_t ci = 0; ci < s.c_in; ++ci)
        for (int64_t ky = 0; ky < s.kh; ++ky) {
          T* dst = acc + (ci * s.h2 + y0 + ky * s.d0) * s.w2 + x0;
          const T* src = col + (ci * s.kh + ky) * kw;
          for (int64_t kx = 0; kx < kw; ++kx) dst[kx * d1] += src[kx];
        }
    }
  });
}

// The columns (hw, K) that the window's taps read from a map dg (C_in, h2, w2) (im2col).
template <typename T>
void unfold(const BacksubConvShape& s, const Geometry& g, const T* __restrict__ dg, T* __restrict__ cols) {
  with_tap_width(s, [&]<int64_t KW>() {
    const int64_t kw = KW > 0 ? KW : s.kw, d1 = KW > 0 ? 1 : s.d1;
    for (int64_t q = 0; q < g.hw; ++q) {
      const int64_t y0 = q / s.w * s.s0, x0 = q % s.w * s.s1;
      T* col = cols + q * g.K;
      for (int64_t ci = 0; ci < s.c_in; ++ci)
        for (int64_t ky = 0; ky < s.kh; ++ky) {
          const T* src = dg + (ci * s.h2 + y0 + ky * s.d0) * s.w2 + x0;
          T* dst = col + (ci * s.kh + ky) * kw;
          for (int64_t kx = 0; kx < kw; ++kx) dst[kx] = src[kx * d1];
        }
    }
  });
}

// sum_co b[co] * sum_window lam_row[co]: the constant the convolution's bias adds to the row.
template <typename T>
T bias_term(const BacksubConvShape& s, const Geometry& g, const T* lam_row, const T* b) {
  T total = T(0);
  for (int64_t co = 0; co < s.c_out; ++co) total += lane_total(lam_row + co * g.hw, g.hw) * b[co];
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

// Runs f.template operator()<N>() with N = n for span widths 1-16, else N = 0 (run-time width). A window
// row's span inside the map is short (4-16 values in the convolutions of gls.app.models): as a run-time
// loop shorter than one AVX-512 vector it is scalar code, with a compile-time width a few fixed-width
// vector instructions. The epilogues are compiled once per width, each a function of its own (one
// dispatch per row; a row's spans all have the same width).
template <typename F>
void with_span_width(int64_t n, F&& f) {
  with_constant<16>(n, f);
}

// N values of T as one GCC vector, and the integer vector of a comparison of two (a typedef in a class: an
// alias template would drop the attribute).
template <typename T, int64_t N>
struct Vector {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> mask __attribute__((vector_size(N * sizeof(T))));
};

// o = g * (a_l where g >= 0, else a_u) over one span of n values (N of them where N > 0, a compile-time
// width), as the sign split pos a_l + neg a_u (gls/bound_ops.h); adds pos c_l + neg c_u of element x to
// lane[x % kLanes] (fixed partial sums: the same on every vector width and for either kind of width).
// With `window` (unless null), copies g there too.
template <typename T, int64_t N>
inline void relax_span(int64_t n, const T* __restrict__ g, const T* __restrict__ al, const T* __restrict__ cl,
                       const T* __restrict__ au, const T* __restrict__ cu, T* __restrict__ o, T* __restrict__ window,
                       T (&lane)[kLanes<T>]) {
  if (window != nullptr)
    for (int64_t x = 0; x < (N > 0 ? N : n); ++x) window[x] = g[x];  // spans are short: no memmove call
  const auto one = [&](int64_t x, int64_t l) {
    const T v = g[x], pos = select_positive(v, v, T(0)), neg = v - pos;
    o[x] = sign_split(pos, neg, al[x], au[x]);
    lane[l] += sign_split(pos, neg, cl[x], cu[x]);
  };
  if constexpr (N > 0 && (N & (N - 1)) == 0 && N <= kLanes<T>) {  // one vector: element x to lane[x]
    using V = typename Vector<T, N>::type;
    V v, a_l, c_l, a_u, c_u, acc;
    std::memcpy(&v, g, sizeof v);
    std::memcpy(&a_l, al, sizeof v);
    std::memcpy(&c_l, cl, sizeof v);
    std::memcpy(&a_u, au, sizeof v);
    std::memcpy(&c_u, cu, sizeof v);
    std::memcpy(&acc, lane, sizeof v);
    typename Vector<T, N>::mask bits;  // pos = v where v > 0, else 0, through the comparison's mask
    std::memcpy(&bits, &v, sizeof v);
    bits &= (v > T(0));
    V pos;
    std::memcpy(&pos, &bits, sizeof v);
    const V neg = v - pos, out = pos * a_l + neg * a_u;
    acc += pos * c_l + neg * c_u;
    std::memcpy(o, &out, sizeof v);
    std::memcpy(lane, &acc, sizeof v);
    return;
  } else if constexpr (N > 0) {
    for (int64_t x = 0; x < N; ++x) one(x, x % kLanes<T>);
    return;
  }
  int64_t x = 0;
  for (; x + kLanes<T> <= n; x += kLanes<T>)
    for (int64_t l = 0; l < kLanes<T>; ++l) {
      const T v = g[x + l], pos = positive_part(v), neg = v - pos;
      o[x + l] = sign_split(pos, neg, al[x + l], au[x + l]);
      lane[l] += sign_split(pos, neg, cl[x + l], cu[x + l]);
    }
  for (int64_t l = 0; x < n; ++x, ++l) one(x, l);
}

// The ReLU epilogue of one row whose window g (C_in, h2, w2) starts at (oy, ox) of the map: o = relaxed
// g inside the map and 0 outside, `window` (unless null) = g inside and 0 outside; returns the constant,
// relax_span's partial sums over the window's rows, summed once. Lines: the maps (C_in, H, W) of the
// row's (member, sample). N: the rows' span width where known at compile time (relax_window below).
// Compiled for every vector width (GLS_SIMD_CLONES).
template <typename T, int64_t N>
GLS_SIMD_CLONES __attribute__((noinline)) T relax_window_of(const BacksubConvShape& s, int64_t oy, int64_t ox,
                                                            const T* __restrict__ g, const T* __restrict__ al,
                                                            const T* __restrict__ cl, const T* __restrict__ au,
                                                            const T* __restrict__ cu, T* __restrict__ o,
                                                            T* __restrict__ window) {
  const Span sp = span_of(s, ox);
  const int64_t win = s.c_in * s.h2 * s.w2, n = sp.x1 - sp.x0;
  std::fill(o, o + win, T(0));
  if (window != nullptr) std::fill(window, window + win, T(0));
  T lane[kLanes<T>] = {};
  for (int64_t ci = 0; ci < s.c_in; ++ci)
    for (int64_t y = 0; y < s.h2; ++y) {
      if (!sp.inside(oy + y, s.H)) continue;
      const int64_t e = (ci * s.h2 + y) * s.w2 + sp.x0, m = (ci * s.H + oy + y) * s.W + ox + sp.x0;
      relax_span<T, N>(n, g + e, al + m, cl + m, au + m, cu + m, o + e, window != nullptr ? window + e : nullptr, lane);
    }
  return lane_sum(lane);
}

// relax_window_of for the span width of the row at origin column ox.
template <typename T>
T relax_window(const BacksubConvShape& s, int64_t oy, int64_t ox, const T* g, const T* al, const T* cl, const T* au,
               const T* cu, T* o, T* window) {
  const Span sp = span_of(s, ox);
  T total;
  with_span_width(sp.x1 - sp.x0,
                  [&]<int64_t N>() { total = relax_window_of<T, N>(s, oy, ox, g, al, cl, au, cu, o, window); });
  return total;
}

}  // namespace gls
