// CPU kernel of gls::concretize: lower bound lam^+ x_lo + lam^- x_hi + bias of every spec row over the
// input box, one pass over lam (memory bound: rows in parallel, each a vectorised reduction).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "gls/bound_checks.h"
#include "vectorize.h"  // before the math headers: lets their branch-free selects vectorise
#include "gls/bound_ops.h"
#include "blocking.h"

namespace gls {
namespace {

using at::Tensor;

// sum_j lam_j^+ lo_j + lam_j^- hi_j, in kLanes fixed partial sums.
template <typename T>
GLS_SIMD_CLONES __attribute__((noinline)) T box_row(const T* __restrict__ lam, const T* __restrict__ lo, const T* __restrict__ hi,
                                    int64_t n) {
  T lane[kLanes<T>] = {};
  int64_t j = 0;
  for (; j + kLanes<T> <= n; j += kLanes<T>)
    for (int64_t l = 0; l < kLanes<T>; ++l) {
      const T g = lam[j + l], pos = positive_part(g);
      lane[l] += sign_split(pos, g - pos, lo[j + l], hi[j + l]);
    }
  for (int64_t l = 0; j < n; ++j, ++l) {
    const T g = lam[j], pos = positive_part(g);
    lane[l] += sign_split(pos, g - pos, lo[j], hi[j]);
  }
  return lane_sum(lane);
}

Tensor concretize_cpu(const Tensor& lam, const Tensor& bias, const Tensor& x_lo, const Tensor& x_hi) {
  const ConcretizeShape s = check_concretize(c10::DeviceType::CPU, lam, bias, x_lo, x_hi);
  const Tensor lamc = lam.contiguous(), biasc = bias.contiguous(), loc = x_lo.contiguous(), hic = x_hi.contiguous();
  Tensor out = at::empty({s.P, s.B, s.S}, lamc.options());
  const int64_t rows = s.P * s.B * s.S;
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(lamc.scalar_type(), "concretize_cpu", [&] {
    const scalar_t *lp = lamc.const_data_ptr<scalar_t>(), *bp = biasc.const_data_ptr<scalar_t>();
    const scalar_t *lo = loc.const_data_ptr<scalar_t>(), *hi = hic.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t n = s.N;
    at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t x_off = ((r / s.S) % s.B) * n;
        op[r] = box_row(lp + r * n, lo + x_off, hi + x_off, n) + bp[r];
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("concretize", &concretize_cpu); }

}  // namespace gls
