// CUDA kernel of gls::noise_weighted_sum: sum_p w_p * sigma * eps_p (kernel in noise.cuh).
#include "noise.cuh"

namespace gls {
namespace {

Tensor noise_weighted_sum_cuda(const Tensor& weights, const Tensor& sigma, const Tensor& members, int64_t d, int64_t seed, int64_t purpose,
                               bool antithetic) {
  return weighted_sum_cuda<false>(weights, sigma, members, d, seed, purpose, antithetic, "noise_weighted_sum");
}

}  // namespace

GLS_CUDA_LIBRARY_IMPL(m) { m.impl("noise_weighted_sum", &noise_weighted_sum_cuda); }

}  // namespace gls
