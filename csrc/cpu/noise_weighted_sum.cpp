// CPU kernel of gls::noise_weighted_sum: sum_p w_p * sigma * eps_p (kernel in noise.h).
#include "noise.h"

namespace gls {
namespace {

using at::Tensor;

Tensor noise_weighted_sum_cpu(const Tensor& weights, const Tensor& sigma, const Tensor& members, int64_t d, int64_t seed, int64_t purpose,
                              bool antithetic) {
  return weighted_sum_cpu<false>(weights, sigma, members, d, seed, purpose, antithetic, "noise_weighted_sum");
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("noise_weighted_sum", &noise_weighted_sum_cpu); }

}  // namespace gls
