// CPU kernel of gls::noise_perturb: theta + sigma * eps_p for every population row, noise regenerated.
#include "noise.h"

namespace gls {
namespace {

using at::Tensor;

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
    at::parallel_for(0, n_members * blocks, kNoiseGrain, [&](int64_t begin, int64_t end) {
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

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("noise_perturb", &noise_perturb_cpu); }

}  // namespace gls
