// CPU kernel of gls::ibp_affine: (mid W^T + b, rad |W|^T) in one pass over W.
//
// Tasks are (member, block of W's rows, block of batch rows). A task takes |W| of its W block into a
// thread-local buffer sized for L2 (kept while the thread's next tasks need the same block) and runs
// both products on it (blocking.h's Gemm on raw blocks) while it is cached, so W is read from
// memory once for both. When W and b are shared and mid and rad are per member, the population is
// folded into the batch (one member with P*B rows: larger GEMMs).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <memory>
#include <tuple>

#include "gls/bound_checks.h"
#include "vectorize.h"  // before the math headers: lets their branch-free selects vectorise
#include "gls/bound_ops.h"
#include "blocking.h"

namespace gls {
namespace {

using at::Tensor;

template <typename T>
GLS_SIMD_CLONES __attribute__((noinline)) void abs_block(const T* __restrict__ w, T* __restrict__ out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = abs_value(w[j]);
}

template <typename T>
void ibp_affine_cpu_impl(IbpAffineShape s, const T* mid, const T* rad, const T* W, const T* b, T* mid_out,
                         T* rad_out) {
  if (s.w_shared && s.b_shared && !s.mid_shared && !s.rad_shared) {
    s.B *= s.P;  // fold the population into the batch
    s.P = 1;
  }
  const int64_t n_in = s.n_in, n_out = s.n_out, B = s.B, row_bytes = std::max<int64_t>(n_in, 1) * sizeof(T);
  // Column blocks: rows of W whose |W| (thread-local) fits in L2; row blocks: batch rows of mid and rad.
  const int64_t cols = std::clamp<int64_t>((int64_t(512) << 10) / row_bytes, 16, std::max<int64_t>(n_out, 1));
  const int64_t col_blocks = (n_out + cols - 1) / cols;
  const int64_t rows = row_block(B, s.P * col_blocks, 2 * row_bytes);
  const int64_t row_blocks = (B + rows - 1) / rows;
  const int64_t mid_stride = s.mid_shared ? 0 : B * n_in, rad_stride = s.rad_shared ? 0 : B * n_in;
  const int64_t w_stride = s.w_shared ? 0 : n_out * n_in, b_stride = s.b_shared ? 0 : n_out;
  // Tasks ordered (member, column block, row block): a thread's consecutive tasks reuse its |W| block.
  const Gemm gemm;
  at::parallel_for(0, s.P * col_blocks * row_blocks, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[]> abs_w(new T[cols * n_in]);
    int64_t abs_of = -1;  // the (member, column block) whose |W| is in abs_w
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pc = task / row_blocks, p = pc / col_blocks;
      const int64_t c0 = (pc % col_blocks) * cols, nc = std::min(n_out, c0 + cols) - c0;
      const int64_t r0 = (task % row_blocks) * rows, nr = std::min(B, r0 + rows) - r0;
      T* mo = mid_out + (p * B + r0) * n_out + c0;
      T* ro = rad_out + (p * B + r0) * n_out + c0;
      if (n_in > 0) {
        const T* w = W + p * w_stride + c0 * n_in;
        if (abs_of != pc) {
          abs_block(w, abs_w.get(), nc * n_in);
          abs_of = pc;
        }
        gemm_block<T>(gemm, nr, nc, n_in, mid + p * mid_stride + r0 * n_in, n_in, w, n_in, true, mo, n_out);
        gemm_block<T>(gemm, nr, nc, n_in, rad + p * rad_stride + r0 * n_in, n_in, abs_w.get(), n_in, true, ro, n_out);
      } else {
        for (int64_t i = 0; i < nr; ++i) {  // empty sums
          std::fill(mo + i * n_out, mo + i * n_out + nc, T(0));
          std::fill(ro + i * n_out, ro + i * n_out + nc, T(0));
        }
      }
      if (b != nullptr) {
        const T* bp = b + p * b_stride + c0;
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t j = 0; j < nc; ++j) mo[i * n_out + j] += bp[j];
      }
    }
  });
}

std::tuple<Tensor, Tensor> ibp_affine_cpu(const Tensor& mid, const Tensor& rad, const Tensor& W,
                                          const c10::optional<Tensor>& b) {
  const IbpAffineShape s = check_ibp_affine(c10::DeviceType::CPU, mid, rad, W, b);
  const Tensor midc = mid.contiguous(), radc = rad.contiguous(), Wc = W.contiguous();
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor mid_out = at::empty({s.P, s.B, s.n_out}, midc.options());
  Tensor rad_out = at::empty({s.P, s.B, s.n_out}, midc.options());
  if (mid_out.numel() == 0) return {mid_out, rad_out};
  AT_DISPATCH_FLOATING_TYPES(midc.scalar_type(), "ibp_affine_cpu", [&] {
    ibp_affine_cpu_impl<scalar_t>(s, midc.const_data_ptr<scalar_t>(), radc.const_data_ptr<scalar_t>(),
                                  Wc.const_data_ptr<scalar_t>(), bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr,
                                  mid_out.mutable_data_ptr<scalar_t>(), rad_out.mutable_data_ptr<scalar_t>());
  });
  return {mid_out, rad_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("ibp_affine", &ibp_affine_cpu); }

}  // namespace gls
