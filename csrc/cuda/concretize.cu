// CUDA kernel of gls::concretize: lam^+ x_lo + lam^- x_hi + bias per spec row, one warp per row
// (coalesced reads of lam, shuffle reduction).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "cuda_compat.cuh"
#include "gls/bound_checks.h"
#include "gls/bound_ops.h"
#include "tiles.cuh"

namespace gls {
namespace {

using at::Tensor;

template <typename T>
__global__ void concretize_kernel(int64_t rows, int64_t B, int64_t S, int64_t n, const T* __restrict__ lam,
                                  const T* __restrict__ bias, const T* __restrict__ x_lo, const T* __restrict__ x_hi,
                                  T* __restrict__ out) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps exit together
  const T* lr = lam + row * n;
  const int64_t x_off = ((row / S) % B) * n;
  T acc = T(0);
  for (int64_t j = lane; j < n; j += 32) {
    const T g = lr[j], pos = positive_part(g);
    acc += sign_split(pos, g - pos, x_lo[x_off + j], x_hi[x_off + j]);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) out[row] = acc + bias[row];
}

Tensor concretize_cuda(const Tensor& lam, const Tensor& bias, const Tensor& x_lo, const Tensor& x_hi) {
  const ConcretizeShape s = check_concretize(kKernelDevice, lam, bias, x_lo, x_hi);
  GLS_DEVICE_GUARD(lam);
  const Tensor lamc = lam.contiguous(), biasc = bias.contiguous(), loc = x_lo.contiguous(), hic = x_hi.contiguous();
  Tensor out = at::empty({s.P, s.B, s.S}, lamc.options());
  const int64_t rows = s.P * s.B * s.S;
  if (rows == 0) return out;
  constexpr int threads = 256;
  const unsigned blocks = cuda_tiles::grid_dim("concretize", "P*B*S", cuda_tiles::ceil_div(rows, threads / 32), 2147483647);
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "concretize_cuda", [&] {
    GLS_LAUNCH(blocks, threads, 0, stream, concretize_kernel<scalar_t>)(
        rows, s.B, s.S, s.N, lamc.const_data_ptr<scalar_t>(), biasc.const_data_ptr<scalar_t>(),
        loc.const_data_ptr<scalar_t>(), hic.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  GLS_LAUNCH_CHECK();
  return out;
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("concretize", &concretize_cuda); }

}  // namespace gls
