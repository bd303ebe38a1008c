// Shared by the CUDA kernels of backsub_conv_relu and its backward (csrc/cuda/backsub_conv_relu.cu,
// backsub_conv_relu_backward.cu): launch geometry, a row's place and window pixels, a fixed-order block
// reduction, and one element of a window's transposed convolution in gather form.
#pragma once

#include <c10/util/Exception.h>

#include <climits>
#include <cstdint>

#include "cuda_compat.cuh"
#include "gls/bound_checks.h"
#include "tiles.cuh"

namespace gls {
namespace conv_windows {

using at::Tensor;
using cuda_tiles::ceil_div;
using cuda_tiles::grid_dim;

constexpr int kMaxThreads = 256;

// Geometry of one launch. Window sizes fit in int (checked on the host); offsets are int64.
struct ConvArgs {
  int64_t B, R;
  int c_out, h, w, c_in, kh, kw, H, W, h2, w2, s0, s1, d0, d1;
  int64_t w_stride, b_stride, r_stride;  // member strides of W, b and the lines (0 when shared)
};

inline ConvArgs make_args(const BacksubConvShape& s) {
  const char* op = "backsub_conv_relu";
  for (const int64_t n : {s.c_out * s.h * s.w, s.c_in * s.h2 * s.w2, s.c_out * s.c_in * s.kh * s.kw, s.c_in * s.H * s.W})
    TORCH_CHECK(n <= INT_MAX, op, ": a window, filter bank or map of ", n, " elements is too large for the CUDA kernel");
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  return ConvArgs{s.B, s.R, i(s.c_out), i(s.h), i(s.w), i(s.c_in), i(s.kh), i(s.kw), i(s.H), i(s.W), i(s.h2), i(s.w2),
                  i(s.s0), i(s.s1), i(s.d0), i(s.d1),
                  s.w_shared ? 0 : s.c_out * s.c_in * s.kh * s.kw, s.b_shared ? 0 : s.c_out,
                  s.relax_shared ? 0 : s.B * s.c_in * s.H * s.W};
}

// Threads of a per-row block: a power of two from 32 to kMaxThreads covering n elements.
inline int row_threads(int64_t n) {
  int t = 32;
  while (t < kMaxThreads && t < n) t *= 2;
  return t;
}

// Sum of v over the block, in a fixed order (warp shuffles, then warp 0 adds the warp sums in order);
// every thread must call it; the result is valid in thread 0. blockDim.x is a multiple of 32, at most
// kMaxThreads.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T warp_sums[kMaxThreads / 32];
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0)
    for (int k = 0; k < int(blockDim.x / 32); ++k) total += warp_sums[k];
  return total;
}

// One row of a launch (blockIdx.x): its member p and sample bi, its coefficients, its member's filters,
// its window's origin and the offset of its (member, sample) relaxation lines.
template <typename T>
struct RowWindow {
  int64_t row, p, bi, oy, ox, roff;
  int hw, lam_n, win2, win;
  const T* lam_row;
  const T* Wp;

  __device__ RowWindow(const ConvArgs& a, int64_t r, const T* lam, const T* W, const int64_t* origin)
      : row(r), p(r / (a.B * a.R)), bi(r / a.R % a.B), oy(origin[2 * r]), ox(origin[2 * r + 1]),
        roff(p * a.r_stride + bi * int64_t(a.c_in) * a.H * a.W), hw(a.h * a.w), lam_n(a.c_out * a.h * a.w),
        win2(a.h2 * a.w2), win(a.c_in * a.h2 * a.w2), lam_row(lam + r * lam_n), Wp(W + p * a.w_stride) {}

  // Window element e as (ci, y, x); returns the index of its pixel in the lines, or -1 outside the map.
  __device__ int64_t pixel(const ConvArgs& a, int e, int& ci, int& y, int& x) const {
    ci = e / win2;
    y = e % win2 / a.w2;
    x = e % a.w2;
    const int64_t gy = oy + y, gx = ox + x;
    if (gy < 0 || gy >= a.H || gx < 0 || gx >= a.W) return -1;
    return roff + (int64_t(ci) * a.H + gy) * a.W + gx;
  }
};

// Element (ci, y, x) of the transposed convolution of one row's window lam_row (C_out, h, w) with the
// member's filters Wp (C_out, C_in, kh, kw): gather form, no padding.
template <typename T>
__device__ T transposed_conv_at(const ConvArgs& a, const T* __restrict__ lam_row, const T* __restrict__ Wp, int ci,
                                int y, int x) {
  const int hw = a.h * a.w, taps = a.kh * a.kw, filter = a.c_in * taps;
  T g = T(0);
  for (int ky = 0; ky < a.kh; ++ky) {
    const int yy = y - ky * a.d0;
    if (yy < 0) break;  // larger ky only moves further up
    if (yy % a.s0 != 0 || yy / a.s0 >= a.h) continue;
    const int qy = yy / a.s0;
    for (int kx = 0; kx < a.kw; ++kx) {
      const int xx = x - kx * a.d1;
      if (xx < 0) break;
      if (xx % a.s1 != 0 || xx / a.s1 >= a.w) continue;
      const T* l = lam_row + qy * a.w + xx / a.s1;
      const T* wt = Wp + ci * taps + ky * a.kw + kx;
      for (int co = 0; co < a.c_out; ++co) g += l[int64_t(co) * hw] * wt[int64_t(co) * filter];
    }
  }
  return g;
}

}  // namespace conv_windows
}  // namespace gls
