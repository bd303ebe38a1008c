// CUDA kernel of gls::ibp_affine: (mid W^T + b, rad |W|^T) as one tiled shared-memory GEMM that loads
// each tile of W once and feeds it to both products (|w| taken on use), bias added in the epilogue.
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

struct IbpArgs {
  int64_t B, n_in, n_out;
  int64_t mid_stride, rad_stride, w_stride, b_stride;  // member strides (0 when shared)
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    ibp_affine_kernel(IbpArgs a, const T* __restrict__ mid, const T* __restrict__ rad, const T* __restrict__ W,
                      const T* __restrict__ b, T* __restrict__ mid_out, T* __restrict__ rad_out) {
  __shared__ T mid_s[kTileK][kTileM + 1];  // [k][batch row] (+1: conflict-free transposing stores)
  __shared__ T rad_s[kTileK][kTileM + 1];
  __shared__ T w_s[kTileK][kTileN + 1];  // [k][output column] = W[column][k]
  const int tid = threadIdx.x, tx = tid % kLanes, ty = tid / kLanes;
  const int64_t p = blockIdx.z, row0 = int64_t(blockIdx.y) * kTileM, col0 = int64_t(blockIdx.x) * kTileN;
  const T* mid_p = mid + p * a.mid_stride;
  const T* rad_p = rad + p * a.rad_stride;
  const T* w_p = W + p * a.w_stride;

  T acc_mid[kSub][kSub] = {}, acc_rad[kSub][kSub] = {};
  for (int64_t k0 = 0; k0 < a.n_in; k0 += kTileK) {
    for (int idx = tid; idx < kTileM * kTileK; idx += kThreads) {  // coalesced along k
      const int r = idx / kTileK, k = idx % kTileK;
      const int64_t gr = row0 + r, gk = k0 + k;
      const bool in = gr < a.B && gk < a.n_in;
      mid_s[k][r] = in ? mid_p[gr * a.n_in + gk] : T(0);
      rad_s[k][r] = in ? rad_p[gr * a.n_in + gk] : T(0);
    }
    for (int idx = tid; idx < kTileN * kTileK; idx += kThreads) {  // W rows are outputs: coalesced along k
      const int c = idx / kTileK, k = idx % kTileK;
      const int64_t gc = col0 + c, gk = k0 + k;
      w_s[k][c] = (gc < a.n_out && gk < a.n_in) ? w_p[gc * a.n_in + gk] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      T m[kSub], r[kSub], w[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) {
        m[i] = mid_s[k][ty + kLanes * i];
        r[i] = rad_s[k][ty + kLanes * i];
      }
#pragma unroll
      for (int j = 0; j < kSub; ++j) w[j] = w_s[k][tx + kLanes * j];
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) {
          acc_mid[i][j] += m[i] * w[j];
          acc_rad[i][j] += r[i] * abs_value(w[j]);
        }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t row = row0 + ty + kLanes * i;
    if (row >= a.B) continue;
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t col = col0 + tx + kLanes * j;
      if (col >= a.n_out) continue;
      const int64_t o = (p * a.B + row) * a.n_out + col;
      mid_out[o] = acc_mid[i][j] + (b != nullptr ? b[p * a.b_stride + col] : T(0));
      rad_out[o] = acc_rad[i][j];
    }
  }
}

std::tuple<Tensor, Tensor> ibp_affine_cuda(const Tensor& mid, const Tensor& rad, const Tensor& W,
                                           const c10::optional<Tensor>& b) {
  const char* op = "ibp_affine";
  IbpAffineShape s = check_ibp_affine(kKernelDevice, mid, rad, W, b);
  GLS_DEVICE_GUARD(mid);
  const Tensor midc = mid.contiguous(), radc = rad.contiguous(), Wc = W.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor mid_out = at::empty({s.P, s.B, s.n_out}, midc.options());
  Tensor rad_out = at::empty({s.P, s.B, s.n_out}, midc.options());
  if (mid_out.numel() == 0) return {mid_out, rad_out};
  if (s.w_shared && s.b_shared && !s.mid_shared && !s.rad_shared) {  // fold the population into the batch
    s.B *= s.P;
    s.P = 1;
  }
  const IbpArgs args{s.B, s.n_in, s.n_out, s.mid_shared ? 0 : s.B * s.n_in, s.rad_shared ? 0 : s.B * s.n_in,
                     s.w_shared ? 0 : s.n_out * s.n_in, s.b_shared ? 0 : s.n_out};
  const dim3 grid(grid_dim(op, "N_out", ceil_div(s.n_out, kTileN), 2147483647), grid_dim(op, "B", ceil_div(s.B, kTileM), 65535),
                  grid_dim(op, "P", s.P, 65535));
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(midc.scalar_type(), "ibp_affine_cuda", [&] {
    GLS_LAUNCH(grid, kThreads, 0, stream, ibp_affine_kernel<scalar_t>)(
        args, midc.const_data_ptr<scalar_t>(), radc.const_data_ptr<scalar_t>(), Wc.const_data_ptr<scalar_t>(),
        bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, mid_out.mutable_data_ptr<scalar_t>(),
        rad_out.mutable_data_ptr<scalar_t>());
  });
  GLS_LAUNCH_CHECK();
  return {mid_out, rad_out};
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("ibp_affine", &ibp_affine_cuda); }

}  // namespace gls
