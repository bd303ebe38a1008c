// CUDA pieces shared by the noise kernels (csrc/cuda/philox4x32_10.cu, noise_*.cu); same math as the CPU
// build (gls/philox.h). One thread per Philox block (4 consecutive elements of one member's stream, written
// to both rows of an antithetic pair); the reductions loop over the population inside the thread, in a
// fixed order, so results are deterministic. population_kernel serves noise_normal and noise_perturb,
// weighted_sum_cuda noise_weighted_sum and noise_sigma_weighted_sum.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "cuda_compat.cuh"
#include "gls/noise_checks.h"
#include "gls/philox.h"

namespace gls {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

int grid_for(int64_t n) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8))); }

// Rows r and (antithetic) R + r of out: theta[i] + sigma[i] * (+-eps_r[i]); without theta (normal): +-eps_r[i].
template <typename T, bool kPerturb>
__global__ void population_kernel(const T* __restrict__ theta, const T* __restrict__ sigma, int64_t sigma_stride,
                                  const int64_t* __restrict__ members, int64_t n_members, int64_t d, uint64_t seed, uint32_t purpose,
                                  bool antithetic, T* __restrict__ out) {
  const int64_t blocks = (d + 3) / 4;
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n_members * blocks; j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = j / blocks, b = j % blocks;
    float n[4];
    philox_normal4(b, (uint32_t)members[r], purpose, seed, n);
    const int64_t lanes = d - 4 * b < 4 ? d - 4 * b : 4;
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t i = 4 * b + l;
      const T e = static_cast<T>(n[l]);
      out[r * d + i] = kPerturb ? theta[i] + sigma[i * sigma_stride] * e : e;
      if (antithetic) out[(n_members + r) * d + i] = kPerturb ? theta[i] + sigma[i * sigma_stride] * -e : -e;
    }
  }
}

// out[i] = sigma[i] * sum_p w[p, i] * f(s_p * eps_p[i]), f(e) = e or e^2 - 1 (kSigmaTerm); each stream is
// generated once per antithetic pair: (w[r] - w[R + r]) * e, or (w[r] + w[R + r]) * (e^2 - 1).
template <typename T, bool kSigmaTerm>
__global__ void weighted_sum_kernel(const T* __restrict__ w, int64_t w_row, int64_t w_col, const T* __restrict__ sigma,
                                    int64_t sigma_stride, const int64_t* __restrict__ members, int64_t n_members, int64_t d,
                                    uint64_t seed, uint32_t purpose, bool antithetic, T* __restrict__ out) {
  const int64_t blocks = (d + 3) / 4;
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < blocks; b += (int64_t)gridDim.x * blockDim.x) {
    const int64_t lanes = d - 4 * b < 4 ? d - 4 * b : 4;
    T acc[4] = {0, 0, 0, 0};
    for (int64_t r = 0; r < n_members; ++r) {
      float n[4];
      philox_normal4(b, (uint32_t)members[r], purpose, seed, n);
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (l < lanes) {
          const int64_t i = 4 * b + l;
          const T e = static_cast<T>(n[l]);
          T weight = w[r * w_row + i * w_col];
          if (antithetic) weight += (kSigmaTerm ? T(1) : T(-1)) * w[(n_members + r) * w_row + i * w_col];
          acc[l] += weight * (kSigmaTerm ? e * e - T(1) : e);
        }
      }
    }
    for (int64_t l = 0; l < lanes; ++l) out[4 * b + l] = sigma[(4 * b + l) * sigma_stride] * acc[l];
  }
}

template <bool kSigmaTerm>
Tensor weighted_sum_cuda(const Tensor& weights, const Tensor& sigma, const Tensor& members, int64_t d, int64_t seed, int64_t purpose,
                         bool antithetic, const char* op) {
  check_noise_members(members, weights, kKernelDevice, op);
  check_noise_dim(d, op);
  check_noise_weights(weights, members, d, antithetic, op);
  const int64_t n_members = members.size(0);
  const int64_t sigma_stride = check_noise_sigma(sigma, d, weights, op);
  GLS_DEVICE_GUARD(weights);
  const Tensor w = weights.contiguous(), sg = sigma.reshape({-1}).contiguous(), m = members.contiguous();
  const int64_t w_row = w.dim() == 2 ? d : 1, w_col = w.dim() == 2 ? 1 : 0, blocks = (d + 3) / 4;
  Tensor out = at::empty({d}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "noise_weighted_sum_cuda", [&] {
    GLS_LAUNCH(grid_for(blocks), kThreads, 0, current_stream(), weighted_sum_kernel<scalar_t, kSigmaTerm>)(
        w.const_data_ptr<scalar_t>(), w_row, w_col, sg.const_data_ptr<scalar_t>(), sigma_stride, m.const_data_ptr<int64_t>(), n_members, d,
        (uint64_t)seed, (uint32_t)purpose, antithetic, out.mutable_data_ptr<scalar_t>());
  });
  GLS_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace gls
