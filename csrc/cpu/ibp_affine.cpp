// CPU kernel of gls::ibp_affine: (mid W^T + b, rad |W|^T) in one pass over W.
//
// Tasks are (member, block of W's rows, block of batch rows). A task takes |W| of its W block into a
// thread-local buffer sized for L2 (kept while the thread's next tasks need the same block) and runs
// both products on it (blocking.h's Gemm on raw blocks) while it is cached, so W is read from
// memory once for both. A wide W (CNN7's 32768-input Linear layer) is also cut along its inputs, the
// products accumulated over the column blocks, so that the |W| block still fits L2. A batch of at most
// kSmallBatch rows goes by dot products instead (small_batch_block). When W and b are
// shared and mid and rad are per member, the population is folded into the batch (one member with P*B
// rows: larger GEMMs). W's members may lie anywhere (a population's members are views into one (P, d)
// tensor): only each member's (N_out, N_in) block must be contiguous, else it is copied.
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

// |w| of an (rows x cols) block with leading dimension ld into a dense (rows x cols) buffer.
template <typename T>
GLS_SIMD_CLONES __attribute__((noinline)) void abs_block(const T* __restrict__ w, int64_t ld, T* __restrict__ out,
                                                         int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[i * cols + j] = abs_value(w[i * ld + j]);
}

// A small batch (at most kSmallBatch rows after folding): every row of W is read once and meets all the
// batch rows in registers, kLanes partial sums each (blocking.h: the same bits on every vector width),
// where GEMMs of so few rows ran at a third of the memory speed (CNN7's 32768 x 512 layer at B = 4).
constexpr int64_t kSmallBatch = 8;
constexpr int64_t kSmallBatchCols = 32;  // rows of W per task

template <typename T, int R>
GLS_SIMD_CLONES __attribute__((noinline)) void small_batch_block(const T* __restrict__ w, int64_t n_in, int64_t nc,
                                                                 const T* __restrict__ mid, const T* __restrict__ rad,
                                                                 T* __restrict__ mo, T* __restrict__ ro, int64_t n_out) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t j = 0; j < nc; ++j) {
    const T* wj = w + j * n_in;
    T am[R][L] = {}, ar[R][L] = {};
    int64_t k = 0;
    for (; k + L <= n_in; k += L)
      for (int r = 0; r < R; ++r)
        for (int64_t l = 0; l < L; ++l) {
          am[r][l] += mid[r * n_in + k + l] * wj[k + l];
          ar[r][l] += rad[r * n_in + k + l] * abs_value(wj[k + l]);
        }
    for (int64_t l = 0; k < n_in; ++k, ++l)
      for (int r = 0; r < R; ++r) {
        am[r][l] += mid[r * n_in + k] * wj[k];
        ar[r][l] += rad[r * n_in + k] * abs_value(wj[k]);
      }
    for (int r = 0; r < R; ++r) {
      mo[r * n_out + j] = lane_sum(am[r]);
      ro[r * n_out + j] = lane_sum(ar[r]);
    }
  }
}

template <typename T, int R = 1>
void small_batch_dispatch(int64_t rows, const T* w, int64_t n_in, int64_t nc, const T* mid, const T* rad, T* mo, T* ro,
                          int64_t n_out) {
  if constexpr (R < kSmallBatch) {
    if (rows != R) return small_batch_dispatch<T, R + 1>(rows, w, n_in, nc, mid, rad, mo, ro, n_out);
  }
  small_batch_block<T, R>(w, n_in, nc, mid, rad, mo, ro, n_out);
}

constexpr int64_t kAbsBlockBytes = int64_t(512) << 10;  // the |W| block: under half of a 1.25 MiB L2
constexpr int64_t kMinCols = 16;                        // rows of W per block, at least

template <typename T>
void ibp_affine_cpu_impl(IbpAffineShape s, const T* mid, const T* rad, const T* W, int64_t w_member_stride,
                         const T* b, T* mid_out, T* rad_out) {
  if (s.w_shared && s.b_shared && !s.mid_shared && !s.rad_shared) {
    s.B *= s.P;  // fold the population into the batch
    s.P = 1;
  }
  const int64_t n_in = s.n_in, n_out = s.n_out, B = s.B;
  const int64_t mid_stride = s.mid_shared ? 0 : B * n_in, rad_stride = s.rad_shared ? 0 : B * n_in;
  const int64_t w_stride = s.w_shared ? 0 : w_member_stride, b_stride = s.b_shared ? 0 : n_out;
  if (B <= kSmallBatch && n_in > 0) {
    const int64_t col_blocks = (n_out + kSmallBatchCols - 1) / kSmallBatchCols;
    at::parallel_for(0, s.P * col_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / col_blocks, c0 = (task % col_blocks) * kSmallBatchCols;
        const int64_t nc = std::min(n_out, c0 + kSmallBatchCols) - c0;
        T* mo = mid_out + p * B * n_out + c0;
        T* ro = rad_out + p * B * n_out + c0;
        small_batch_dispatch<T>(B, W + p * w_stride + c0 * n_in, n_in, nc, mid + p * mid_stride, rad + p * rad_stride,
                                mo, ro, n_out);
        if (b != nullptr)
          for (int64_t i = 0; i < B; ++i)
            for (int64_t j = 0; j < nc; ++j) mo[i * n_out + j] += b[p * b_stride + c0 + j];
      }
    });
    return;
  }
  // Input blocks: as wide as lets kMinCols rows of |W| fit kAbsBlockBytes; column blocks: rows of W whose
  // |W| (thread-local) fits kAbsBlockBytes; row blocks: batch rows of mid and rad.
  const int64_t kc = std::clamp<int64_t>(kAbsBlockBytes / (kMinCols * int64_t(sizeof(T))), 1, std::max<int64_t>(n_in, 1));
  const int64_t k_blocks = (n_in + kc - 1) / kc, row_bytes = kc * int64_t(sizeof(T));
  const int64_t cols = std::clamp<int64_t>(kAbsBlockBytes / row_bytes, kMinCols, std::max<int64_t>(n_out, 1));
  const int64_t col_blocks = (n_out + cols - 1) / cols;
  const int64_t rows = row_block(B, s.P * col_blocks, 2 * row_bytes);
  const int64_t row_blocks = (B + rows - 1) / rows;
  // Tasks ordered (member, column block, row block): a thread's consecutive tasks reuse its |W| block
  // (when W has one input block; with several, each task takes its blocks in turn).
  const Gemm gemm;
  at::parallel_for(0, s.P * col_blocks * row_blocks, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[]> abs_w(new T[cols * kc]);
    int64_t abs_of = -1;  // the (member, column block) whose |W| is in abs_w (one input block only)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pc = task / row_blocks, p = pc / col_blocks;
      const int64_t c0 = (pc % col_blocks) * cols, nc = std::min(n_out, c0 + cols) - c0;
      const int64_t r0 = (task % row_blocks) * rows, nr = std::min(B, r0 + rows) - r0;
      T* mo = mid_out + (p * B + r0) * n_out + c0;
      T* ro = rad_out + (p * B + r0) * n_out + c0;
      for (int64_t k0 = 0; k0 < n_in; k0 += kc) {
        const int64_t nk = std::min(n_in, k0 + kc) - k0;
        const T* w = W + p * w_stride + c0 * n_in + k0;
        if (k_blocks > 1 || abs_of != pc) {
          abs_block(w, n_in, abs_w.get(), nc, nk);
          abs_of = pc;
        }
        const bool acc = k0 > 0;
        gemm_block<T>(gemm, nr, nc, nk, mid + p * mid_stride + r0 * n_in + k0, n_in, w, n_in, true, mo, n_out, acc);
        gemm_block<T>(gemm, nr, nc, nk, rad + p * rad_stride + r0 * n_in + k0, n_in, abs_w.get(), nk, true, ro, n_out,
                      acc);
      }
      if (n_in == 0) {
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

// W as it can be read in place: each member's (N_out, N_in) block contiguous, the members at any stride.
Tensor members_readable(const Tensor& W) {
  const bool inner = W.size(2) <= 1 || W.stride(2) == 1;
  const bool rows = W.size(1) <= 1 || W.stride(1) == W.size(2);
  return inner && rows && W.stride(0) >= 0 ? W : W.contiguous();
}

std::tuple<Tensor, Tensor> ibp_affine_cpu(const Tensor& mid, const Tensor& rad, const Tensor& W,
                                          const c10::optional<Tensor>& b) {
  const IbpAffineShape s = check_ibp_affine(c10::DeviceType::CPU, mid, rad, W, b);
  const Tensor midc = mid.contiguous(), radc = rad.contiguous(), Wc = members_readable(W);
  const Tensor bc = b.has_value() ? b->contiguous() : Tensor();
  Tensor mid_out = at::empty({s.P, s.B, s.n_out}, midc.options());
  Tensor rad_out = at::empty({s.P, s.B, s.n_out}, midc.options());
  if (mid_out.numel() == 0) return {mid_out, rad_out};
  AT_DISPATCH_FLOATING_TYPES(midc.scalar_type(), "ibp_affine_cpu", [&] {
    ibp_affine_cpu_impl<scalar_t>(s, midc.const_data_ptr<scalar_t>(), radc.const_data_ptr<scalar_t>(),
                                  Wc.const_data_ptr<scalar_t>(), Wc.stride(0),
                                  bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr,
                                  mid_out.mutable_data_ptr<scalar_t>(), rad_out.mutable_data_ptr<scalar_t>());
  });
  return {mid_out, rad_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("ibp_affine", &ibp_affine_cpu); }

}  // namespace gls
