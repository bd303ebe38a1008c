// CPU kernel of gls::noise_normal: the normals of a population's rows, (R or 2R, d) in float32.
#include "noise.h"

namespace gls {
namespace {

using at::Tensor;

Tensor noise_normal_cpu(const Tensor& members, int64_t d, int64_t seed, int64_t purpose, bool antithetic) {
  check_noise_members(members, members, c10::DeviceType::CPU, "noise_normal");
  check_noise_dim(d, "noise_normal");
  const Tensor m = members.contiguous();
  const int64_t n_members = m.size(0), rows = antithetic ? 2 * n_members : n_members, blocks = (d + 3) / 4;
  Tensor out = at::empty({rows, d}, m.options().dtype(at::kFloat));
  const int64_t* mp = m.const_data_ptr<int64_t>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, n_members * blocks, kNoiseGrain, [&](int64_t begin, int64_t end) {
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

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("noise_normal", &noise_normal_cpu); }

}  // namespace gls
