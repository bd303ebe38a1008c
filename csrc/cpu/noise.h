// CPU pieces shared by the noise kernels (csrc/cpu/philox4x32_10.cpp, noise_*.cpp): the parallel grain and
// the weighted-sum kernel behind noise_weighted_sum and noise_sigma_weighted_sum. The math is gls/philox.h,
// shared with the CUDA build.
//
// Every element is a pure function of (seed, purpose, member, index), and the reductions run over the
// population in a fixed order per element, so results do not depend on the thread count.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "gls/noise_checks.h"
#include "gls/philox.h"

namespace gls {

constexpr int64_t kNoiseGrain = 256;  // philox blocks (of 4 elements) per parallel task, at the least

// sum_p w[p, i] * sigma_i * f(s_p * eps_p[i]) with f(e) = e (kSigmaTerm false) or e^2 - 1 (true). With
// antithetic, each stream is generated once for its pair: (w[r] - w[R + r]) * e, or (w[r] + w[R + r]) * (e^2 - 1).
template <bool kSigmaTerm>
inline at::Tensor weighted_sum_cpu(const at::Tensor& weights, const at::Tensor& sigma, const at::Tensor& members, int64_t d, int64_t seed, int64_t purpose,
                        bool antithetic, const char* op) {
  check_noise_members(members, weights, c10::DeviceType::CPU, op);
  check_noise_dim(d, op);
  check_noise_weights(weights, members, d, antithetic, op);
  const int64_t n_members = members.size(0);
  const int64_t sigma_stride = check_noise_sigma(sigma, d, weights, op);
  const at::Tensor w = weights.contiguous(), sg = sigma.reshape({-1}).contiguous(), m = members.contiguous();
  const int64_t w_row = w.dim() == 2 ? d : 1, w_col = w.dim() == 2 ? 1 : 0, blocks = (d + 3) / 4;
  at::Tensor out = at::empty({d}, w.options());
  const int64_t* mp = m.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "noise_weighted_sum_cpu", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* sp = sg.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, kNoiseGrain / 4, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t lanes = std::min<int64_t>(4, d - 4 * b);
        scalar_t acc[4] = {0, 0, 0, 0};
        for (int64_t r = 0; r < n_members; ++r) {
          float n[4];
          philox_normal4(b, static_cast<uint32_t>(mp[r]), static_cast<uint32_t>(purpose), static_cast<uint64_t>(seed), n);
          for (int64_t l = 0; l < lanes; ++l) {
            const int64_t i = 4 * b + l;
            const scalar_t e = static_cast<scalar_t>(n[l]);
            scalar_t weight = wp[r * w_row + i * w_col];
            if (antithetic) weight += (kSigmaTerm ? 1 : -1) * wp[(n_members + r) * w_row + i * w_col];
            acc[l] += weight * (kSigmaTerm ? e * e - scalar_t(1) : e);
          }
        }
        for (int64_t l = 0; l < lanes; ++l) outp[4 * b + l] = sp[(4 * b + l) * sigma_stride] * acc[l];
      }
    });
  });
  return out;
}

}  // namespace gls
