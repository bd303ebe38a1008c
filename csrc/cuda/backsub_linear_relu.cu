// CUDA kernel of gls::backsub_linear_relu: tiled shared-memory GEMM lam W with the sign-split epilogue
// fused, so the tile of lam W lives only in registers.
//
// Per member (grid z) and output tile: accumulate lam W in registers; apply pos * a_l + neg * a_u and
// write the new lam; reduce pos * c_l + neg * c_u over the tile's columns into one partial sum per row
// and column tile. A second kernel (a warp per row) adds lam . b and the partials in a fixed order, so
// the bias is deterministic (no atomics).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "cuda_compat.cuh"
#include "gls/bound_checks.h"
#include "gls/bound_ops.h"
#include "tiles.cuh"

namespace gls {
namespace {

using at::Tensor;
using namespace cuda_tiles;

struct BacksubArgs {
  int64_t rows, S, B, n_out, n_in, n_col_tiles;
  int64_t w_stride, b_stride, r_stride;  // member strides (0 when shared)
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backsub_tile_kernel(BacksubArgs a, const T* __restrict__ lam, const T* __restrict__ W, const T* __restrict__ a_l,
                        const T* __restrict__ c_l, const T* __restrict__ a_u, const T* __restrict__ c_u,
                        T* __restrict__ out, T* __restrict__ partial) {
  __shared__ T lam_s[kTileK][kTileM + 1];  // lam tile, transposed: [k][row] (+1: conflict-free transposing stores)
  __shared__ T w_s[kTileK][kTileN];    // W tile: [k][col]
  const int tid = threadIdx.x, tx = tid % kLanes, ty = tid / kLanes;
  const int64_t p = blockIdx.z, row0 = int64_t(blockIdx.y) * kTileM, col0 = int64_t(blockIdx.x) * kTileN;
  const T* lam_p = lam + p * a.rows * a.n_out;
  const T* w_p = W + p * a.w_stride;

  T acc[kSub][kSub] = {};
  for (int64_t k0 = 0; k0 < a.n_out; k0 += kTileK) {
    for (int idx = tid; idx < kTileM * kTileK; idx += kThreads) {  // coalesced along k
      const int r = idx / kTileK, k = idx % kTileK;
      const int64_t gr = row0 + r, gk = k0 + k;
      lam_s[k][r] = (gr < a.rows && gk < a.n_out) ? lam_p[gr * a.n_out + gk] : T(0);
    }
    for (int idx = tid; idx < kTileK * kTileN; idx += kThreads) {  // coalesced along columns
      const int k = idx / kTileN, c = idx % kTileN;
      const int64_t gk = k0 + k, gc = col0 + c;
      w_s[k][c] = (gk < a.n_out && gc < a.n_in) ? w_p[gk * a.n_in + gc] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      T l[kSub], w[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) l[i] = lam_s[k][ty + kLanes * i];
#pragma unroll
      for (int j = 0; j < kSub; ++j) w[j] = w_s[k][tx + kLanes * j];
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += l[i] * w[j];
    }
    __syncthreads();
  }

  // Epilogue: relax each coefficient, reduce the constants over this tile's columns.
#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t row = row0 + ty + kLanes * i;
    T bias = T(0);
    if (row < a.rows) {
      const int64_t relax_off = p * a.r_stride + (row / a.S) * a.n_in;
#pragma unroll
      for (int j = 0; j < kSub; ++j) {
        const int64_t col = col0 + tx + kLanes * j;
        if (col < a.n_in) {
          const T g = acc[i][j], pos = positive_part(g), neg = g - pos;
          bias += sign_split(pos, neg, c_l[relax_off + col], c_u[relax_off + col]);
          out[(p * a.rows + row) * a.n_in + col] = sign_split(pos, neg, a_l[relax_off + col], a_u[relax_off + col]);
        }
      }
    }
    // Sum over the 16 threads (tx) sharing this row: they are one half of a warp.
#pragma unroll
    for (int off = kLanes / 2; off > 0; off /= 2) bias += __shfl_xor_sync(0xffffffffu, bias, off);
    if (tx == 0 && row < a.rows) partial[(p * a.rows + row) * a.n_col_tiles + blockIdx.x] = bias;
  }
}

// bias[p, row] = lam[p, row] . b[p] + sum of the row's column-tile partials, one warp per row.
template <typename T>
__global__ void backsub_bias_kernel(BacksubArgs a, int64_t total_rows, const T* __restrict__ lam,
                                    const T* __restrict__ b, const T* __restrict__ partial, T* __restrict__ bias) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= total_rows) return;  // whole warps exit together
  const int64_t p = warp / a.rows;
  T acc = T(0);
  if (b != nullptr) {
    const T* lr = lam + warp * a.n_out;
    const T* bp = b + p * a.b_stride;
    for (int64_t k = lane; k < a.n_out; k += 32) acc += lr[k] * bp[k];
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    const T* pr = partial + warp * a.n_col_tiles;
    for (int64_t t = 0; t < a.n_col_tiles; ++t) acc += pr[t];
    bias[warp] = acc;
  }
}

std::tuple<Tensor, Tensor> backsub_linear_relu_cuda(const Tensor& lam, const Tensor& W, const c10::optional<Tensor>& b,
                                                    const Tensor& a_l, const Tensor& c_l, const Tensor& a_u,
                                                    const Tensor& c_u) {
  const char* op = "backsub_linear_relu";
  const BacksubShape s = check_backsub(kKernelDevice, lam, W, b, a_l, c_l, a_u, c_u);
  GLS_DEVICE_GUARD(lam);
  const Tensor lamc = lam.contiguous(), Wc = W.contiguous(), alc = a_l.contiguous(), clc = c_l.contiguous(),
               auc = a_u.contiguous(), cuc = c_u.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor out = at::empty({s.P, s.B, s.S, s.n_in}, lamc.options());
  Tensor bias = at::empty({s.P, s.B, s.S}, lamc.options());
  const int64_t rows = s.B * s.S, total_rows = s.P * rows;
  if (total_rows == 0) return {out, bias};
  const BacksubArgs args{rows, s.S, s.B, s.n_out, s.n_in, ceil_div(s.n_in, kTileN),
                         s.w_shared ? 0 : s.n_out * s.n_in, s.b_shared ? 0 : s.n_out, s.relax_shared ? 0 : s.B * s.n_in};
  Tensor partial = at::empty({std::max<int64_t>(total_rows * args.n_col_tiles, 1)}, lamc.options());
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "backsub_linear_relu_cuda", [&] {
    if (s.n_in > 0) {
      const dim3 grid(grid_dim(op, "N_in", args.n_col_tiles, 2147483647), grid_dim(op, "B*S", ceil_div(rows, kTileM), 65535),
                      grid_dim(op, "P", s.P, 65535));
      GLS_LAUNCH(grid, kThreads, 0, stream, backsub_tile_kernel<scalar_t>)(
          args, lamc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(), alc.const_data_ptr<scalar_t>(),
          clc.const_data_ptr<scalar_t>(), auc.const_data_ptr<scalar_t>(), cuc.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<scalar_t>());
      GLS_LAUNCH_CHECK();
    }
    const int64_t warps_per_block = kThreads / 32;
    GLS_LAUNCH(grid_dim(op, "P*B*S", ceil_div(total_rows, warps_per_block), 2147483647), kThreads, 0, stream, backsub_bias_kernel<scalar_t>)(
        args, total_rows, lamc.const_data_ptr<scalar_t>(), bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr,
        partial.const_data_ptr<scalar_t>(), bias.mutable_data_ptr<scalar_t>());
    GLS_LAUNCH_CHECK();
  });
  return {out, bias};
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("backsub_linear_relu", &backsub_linear_relu_cuda); }

}  // namespace gls
