// CPU kernels of the counter-based Gaussian noise ops (gls::philox4x32_10, noise_normal, noise_perturb,
// noise_weighted_sum, noise_sigma_weighted_sum); the math is gls/philox.h, shared with the CUDA build.
//
// Every element is a pure function of (seed, purpose, member, index), and the reductions run over the
// population in a fixed order per element, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "gls/noise_checks.h"
#include "gls/philox.h"

namespace gls {
namespace {

using at::Tensor;

constexpr int64_t kGrain = 256;  // philox blocks (of 4 elements) per parallel task, at the least

Tensor philox4x32_10_cpu(const Tensor& counter, const Tensor& key) {
  check_philox_args(counter, key, c10::DeviceType::CPU);
  const Tensor c = counter.contiguous(), k = key.contiguous();
  Tensor out = at::empty(c.sizes(), c.options());
  const int64_t* cp = c.const_data_ptr<int64_t>();
  const int64_t* kp = k.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, c.numel() / 4, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      U32x4 x{{static_cast<uint32_t>(cp[4 * j]), static_cast<uint32_t>(cp[4 * j + 1]), static_cast<uint32_t>(cp[4 * j + 2]),
               static_cast<uint32_t>(cp[4 * j + 3])}};
      x = philox4x32_10(x, static_cast<uint32_t>(kp[2 * j]), static_cast<uint32_t>(kp[2 * j + 1]));
      for (int w = 0; w < 4; ++w) op[4 * j + w] = x.v[w];
    }
  });
  return out;
}

Tensor noise_normal_cpu(const Tensor& members, int64_t d, int64_t seed, int64_t purpose, bool antithetic) {
  check_noise_members(members, members, c10::DeviceType::CPU, "noise_normal");
  check_noise_dim(d, "noise_normal");
  const Tensor m = members.contiguous();
  const int64_t n_members = m.size(0), rows = antithetic ? 2 * n_members : n_members, blocks = (d + 3) / 4;
  Tensor out = at::empty({rows, d}, m.options().dtype(at::kFloat));
  const int64_t* mp = m.const_data_ptr<int64_t>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, n_members * blocks, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t r = j / blocks, b = j % blocks, lanes = std::min<int64_t>(4, d - 4 * b);
      float n[4];
      philox_normal4(b, static_cast<uint32_t>(mp[r]), static_cast<uint32_t>(purpose), static_cast<uint64_t>(seed), n);
      for (int64_t l = 0; l < lanes; ++l) op[r * d + 4 * b + l] = n[l];
      if (antithetic)
        for (int64_t l = 0; l < lanes; ++l) op[(n_members + r) * d + 4 * b + l] = -n[l];
    }
  });
  return out;
}

Tensor noise_perturb_cpu(const Tensor& theta, const Tensor& sigma, const Tensor& members, int64_t seed, int64_t purpose, bool antithetic) {
  check_noise_theta(theta);
  check_noise_members(members, theta, c10::DeviceType::CPU, "noise_perturb");
  const int64_t d = theta.size(0);
  const int64_t sigma_stride = check_noise_sigma(sigma, d, theta, "noise_perturb");
  const Tensor th = theta.contiguous(), sg = sigma.reshape({-1}).contiguous(), m = members.contiguous();
  const int64_t n_members = m.size(0), rows = antithetic ? 2 * n_members : n_members, blocks = (d + 3) / 4;
  Tensor out = at::empty({rows, d}, th.options());
  const int64_t* mp = m.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(th.scalar_type(), "noise_perturb_cpu", [&] {
    const scalar_t* tp = th.const_data_ptr<scalar_t>();
    const scalar_t* sp = sg.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n_members * blocks, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t r = j / blocks, b = j % blocks, lanes = std::min<int64_t>(4, d - 4 * b);
        float n[4];
        philox_normal4(b, static_cast<uint32_t>(mp[r]), static_cast<uint32_t>(purpose), static_cast<uint64_t>(seed), n);
        for (int64_t l = 0; l < lanes; ++l) {
          const int64_t i = 4 * b + l;
          const scalar_t e = static_cast<scalar_t>(n[l]);
          op[r * d + i] = tp[i] + sp[i * sigma_stride] * e;
          if (antithetic) op[(n_members + r) * d + i] = tp[i] + sp[i * sigma_stride] * -e;
        }
      }
    });
  });
  return out;
}

// sum_p w[p, i] * sigma_i * f(s_p * eps_p[i]) with f(e) = e (kSigmaTerm false) or e^2 - 1 (true). With
// antithetic, each stream is generated once for its pair: (w[r] - w[R + r]) * e, or (w[r] + w[R + r]) * (e^2 - 1).
template <bool kSigmaTerm>
Tensor weighted_sum_cpu(const Tensor& weights, const Tensor& sigma, const Tensor& members, int64_t d, int64_t seed, int64_t purpose,
                        bool antithetic, const char* op) {
  check_noise_members(members, weights, c10::DeviceType::CPU, op);
  check_noise_dim(d, op);
  check_noise_weights(weights, members, d, antithetic, op);
  const int64_t n_members = members.size(0);
  const int64_t sigma_stride = check_noise_sigma(sigma, d, weights, op);
  const Tensor w = weights.contiguous(), sg = sigma.reshape({-1}).contiguous(), m = members.contiguous();
  const int64_t w_row = w.dim() == 2 ? d : 1, w_col = w.dim() == 2 ? 1 : 0, blocks = (d + 3) / 4;
  Tensor out = at::empty({d}, w.options());
  const int64_t* mp = m.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "noise_weighted_sum_cpu", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* sp = sg.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, kGrain / 4, [&](int64_t begin, int64_t end) {
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

Tensor noise_weighted_sum_cpu(const Tensor& weights, const Tensor& sigma, const Tensor& members, int64_t d, int64_t seed, int64_t purpose,
                              bool antithetic) {
  return weighted_sum_cpu<false>(weights, sigma, members, d, seed, purpose, antithetic, "noise_weighted_sum");
}

Tensor noise_sigma_weighted_sum_cpu(const Tensor& weights, const Tensor& sigma, const Tensor& members, int64_t d, int64_t seed,
                                    int64_t purpose, bool antithetic) {
  return weighted_sum_cpu<true>(weights, sigma, members, d, seed, purpose, antithetic, "noise_sigma_weighted_sum");
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) {
  m.impl("philox4x32_10", &philox4x32_10_cpu);
  m.impl("noise_normal", &noise_normal_cpu);
  m.impl("noise_perturb", &noise_perturb_cpu);
  m.impl("noise_weighted_sum", &noise_weighted_sum_cpu);
  m.impl("noise_sigma_weighted_sum", &noise_sigma_weighted_sum_cpu);
}

}  // namespace gls
