// CPU kernel of gls::relu_relax: the ReLU relaxation lines, elementwise.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "gls/relax.h"

namespace gls {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> relu_relax_cpu(const Tensor& l, const Tensor& u, c10::string_view method) {
  const int64_t code = relax_method_code(std::string_view(method.data(), method.size()));
  TORCH_CHECK(code >= 0, "relu_relax: unknown method '", std::string(method), "' (expected ibp, hbox, crown-ibp, deeppoly or crown)");
  TORCH_CHECK(l.sizes() == u.sizes(), "relu_relax: l and u must have the same shape, got ", l.sizes(), " and ", u.sizes());
  TORCH_CHECK(l.scalar_type() == u.scalar_type(), "relu_relax: l and u must have the same dtype, got ", l.scalar_type(), " and ", u.scalar_type());
  TORCH_CHECK(l.device().is_cpu() && u.device().is_cpu(), "relu_relax: CPU kernel called with non-CPU tensors");
  const Tensor lc = l.contiguous(), uc = u.contiguous();
  Tensor a_l = at::empty_like(lc), c_l = at::empty_like(lc), a_u = at::empty_like(lc), c_u = at::empty_like(lc);
  AT_DISPATCH_FLOATING_TYPES(lc.scalar_type(), "relu_relax_cpu", [&] {
    const scalar_t* lp = lc.const_data_ptr<scalar_t>();
    const scalar_t* up = uc.const_data_ptr<scalar_t>();
    scalar_t *alp = a_l.mutable_data_ptr<scalar_t>(), *clp = c_l.mutable_data_ptr<scalar_t>();
    scalar_t *aup = a_u.mutable_data_ptr<scalar_t>(), *cup = c_u.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, lc.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) relu_relax<scalar_t>(lp[i], up[i], code, alp[i], clp[i], aup[i], cup[i]);
    });
  });
  return {a_l, c_l, a_u, c_u};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("relu_relax", &relu_relax_cpu); }

}  // namespace gls
