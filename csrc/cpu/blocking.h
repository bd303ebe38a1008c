// Building blocks of the CPU bound-propagation kernels: task sizes, GEMM on raw blocks, and the
// partial-sum width of row reductions (fixed, so results do not depend on the vector width).
#pragma once

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace at::native {
// oneDNN's matmul, result = beta * result + alpha * mat1 @ mat2: exported by libtorch_cpu (TORCH_API) but
// without an installed header. Weak, so that a torch without it still loads gls (the GEMMs then use BLAS).
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta,
                             float alpha) __attribute__((weak));
}  // namespace at::native

namespace gls {

// Rows per task so that one task's block of `row_bytes`-wide rows fits in L2 (`target_bytes`) while
// `members * rows` rows still give every thread a few tasks to balance.
inline int64_t row_block(int64_t rows, int64_t members, int64_t row_bytes, int64_t target_bytes = int64_t(256) << 10) {
  int64_t block = std::max<int64_t>(8, target_bytes / std::max<int64_t>(row_bytes, 1));
  const int64_t tasks_wanted = 4 * int64_t(at::get_num_threads());
  const int64_t rows_per_task = (members * rows + tasks_wanted - 1) / tasks_wanted;
  block = std::min(block, std::max<int64_t>(8, rows_per_task));
  return std::clamp<int64_t>(block, 1, std::max<int64_t>(rows, 1));
}

// Runs worker(next) once per thread; the worker takes task indices from next() until it returns one >=
// `tasks`. Threads take tasks as they free up, where at::parallel_for gives each thread one fixed range:
// with tasks of uneven cost (rows skipped as zero, ragged per-sample row sets) a fixed split leaves a
// thread idle. A task's result must not depend on the thread that runs it.
template <typename Worker>
void parallel_tasks(int64_t tasks, const Worker& worker) {
  std::atomic<int64_t> counter{0};
  const auto next = [&counter]() { return counter.fetch_add(1, std::memory_order_relaxed); };
  at::parallel_for(0, std::min<int64_t>(tasks, at::get_num_threads()), 1, [&](int64_t, int64_t) { worker(next); });
}

// A (rows x cols) row-major matrix view of raw memory with leading dimension `ld` (no copy, no ownership).
template <typename T>
at::Tensor matrix_view(const T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// Whether this torch runs oneDNN's matmul on float32 on this CPU. torch 2.14 refuses it (c10::Error) on a
// CPU without AVX-512 BW/VL/DQ or AVX-NE-CONVERT (an AVX2-only AMD EPYC), where its own float32 matmuls use
// BLAS; asking is the one check that follows torch's rule whatever its version. Probed once per process.
inline bool onednn_float_matmul_runs() {
  static const bool runs = [] {
    if (&at::native::mkldnn_matmul == nullptr || !at::hasMKLDNN()) return false;
    float a = 2.f, b = 3.f, c = 0.f;
    try {
      at::native::mkldnn_matmul(matrix_view(&a, 1, 1, 1), matrix_view(&b, 1, 1, 1), matrix_view(&c, 1, 1, 1), 0.f,
                                1.f);
    } catch (const c10::Error&) {
      return false;
    }
    return c == 6.f;
  }();
  return runs;
}

// GEMMs on matrix views, c = a @ b (c += a @ b with `accumulate`), single-threaded inside our parallel
// region. float32 GEMMs of at least kOneDnnMacs multiply-adds go to oneDNN's matmul, smaller ones and
// float64 to ATen's BLAS (MKL/OpenBLAS), as do all where torch refuses oneDNN's float32 matmul
// (onednn_float_matmul_runs). Measured on one core of the AMD EPYC of bench/results: oneDNN's
// JIT kernels use AVX-512 where MKL does not, 144-223 against 64-98 GFLOP/s on the back-substitution
// GEMMs, but its ~10 us per call loses below ~1M multiply-adds. oneDNN is used only where torch would use it in float32
// arithmetic: torch.backends.mkldnn enabled (the switch that turns it off) and its float32 matmul
// precision at the default "ieee"/"none" (not bf16/tf32); the numbers then differ from BLAS's by rounding.
// Fix the choice once per op call (it reads torch's global settings).
//
// oneDNN compiles a kernel for every new shape and stride (0.1-0.3 ms, then cached), and the kernels'
// row counts follow the data (the unstable rows of each batch): on fresh batches of trained cnn3 that
// compiling cost 5-10 ms per DeepPoly gradient step, more than oneDNN saved. So oneDNN only sees a
// dimension that follows the data with four leading binary digits (at most 8 sizes per power of two),
// and strides that follow from the sizes: torch's mkldnn_matmul copies an operand that is neither
// contiguous nor exactly transposed before it calls oneDNN (a copy per GEMM), so callers lay out their
// blocks densely for the padded size. That bounds the shapes oneDNN ever compiles. A caller whose buffers
// have room past that dimension computes the GEMM on `padded(n)` of it (scratch past n; the conv kernels); one
// whose rows follow the data and have no room past them calls `rows_from_data`, which gives oneDNN the
// rows rounded down and BLAS the rest (at most an eighth): an extra call, which cost the conv kernels
// about 3% of a DeepPoly gradient step before they padded instead.
class Gemm {
 public:
  static constexpr int64_t kOneDnnMacs = int64_t(1) << 20;

  // n rounded down (up) to four leading binary digits.
  static int64_t leading(int64_t n) {
    if (n < 16) return n;
    const int64_t unit = int64_t(1) << (60 - __builtin_clzll(uint64_t(n)));  // 2^(floor(log2 n) - 3)
    return n / unit * unit;
  }
  static int64_t leading_up(int64_t n) {
    const int64_t down = leading(n);
    return down == n ? n : down + (int64_t(1) << (60 - __builtin_clzll(uint64_t(n))));
  }

  Gemm() {
    const auto precision = at::globalContext().float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
    onednn_ = at::globalContext().userEnabledMkldnn() &&
              (precision == at::Float32Precision::NONE || precision == at::Float32Precision::IEEE) &&
              onednn_float_matmul_runs();
  }

  // The extent to compute of a dimension n that follows the data, in buffers with room for leading_up(n):
  // leading_up(n) where oneDNN will run the GEMM (macs: its multiply-adds per unit of n), else n.
  int64_t padded(int64_t n, int64_t macs, at::ScalarType dtype) const {
    const int64_t up = leading_up(n);
    return onednn(up * macs, dtype) ? up : n;
  }

  // c = a @ b (c += a @ b with `accumulate`), every dimension fixed or `padded`.
  void operator()(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, bool accumulate = false) const {
    if (onednn(a.size(0) * a.size(1) * b.size(1), a.scalar_type()))
      at::native::mkldnn_matmul(a, b, c, accumulate ? 1.f : 0.f, 1.f);
    else
      blas(c, a, b, accumulate);
  }

  // c = a @ b (c += a @ b with `accumulate`) whose row count follows the data, with no room past it.
  void rows_from_data(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, bool accumulate = false) const {
    const int64_t n = c.size(0), q = leading(n);
    if (q == n) {
      (*this)(c, a, b, accumulate);
    } else if (!onednn(q * a.size(1) * b.size(1), a.scalar_type())) {
      blas(c, a, b, accumulate);
    } else {
      at::native::mkldnn_matmul(a.narrow(0, 0, q), b, c.narrow(0, 0, q), accumulate ? 1.f : 0.f, 1.f);
      blas(c.narrow(0, q, n - q), a.narrow(0, q, n - q), b, accumulate);
    }
  }

 private:
  bool onednn(int64_t macs, at::ScalarType dtype) const {
    return onednn_ && dtype == at::kFloat && macs >= kOneDnnMacs;
  }

  static void blas(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (accumulate) {
      c.addmm_(a, b);
    } else {
      at::Tensor out = c;  // a handle to the same view
      at::mm_out(out, a, b);
    }
  }

  bool onednn_ = false;
};

// C = A @ B (C += A @ B with `accumulate`) on raw blocks through `gemm`, the row count m following the
// data. `b_transposed`: B is stored as its (cols x k) transpose.
template <typename T>
void gemm_block(const Gemm& gemm, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
                bool b_transposed, T* C, int64_t ldc, bool accumulate = false) {
  const at::Tensor b = b_transposed ? matrix_view(B, n, k, ldb).t() : matrix_view(B, k, n, ldb);
  gemm.rows_from_data(matrix_view(C, m, n, ldc), matrix_view(A, m, k, lda), b, accumulate);
}

// Partial sums per row reduction: one cache line of T, enough for AVX-512 with no reassociation.
template <typename T>
inline constexpr int64_t kLanes = 64 / sizeof(T);

// Sum of the partial sums, pairwise.
template <typename T, int64_t N>
T lane_sum(T (&lane)[N]) {
  for (int64_t half = N / 2; half > 0; half /= 2)
    for (int64_t l = 0; l < half; ++l) lane[l] += lane[l + half];
  return lane[0];
}

// x[0] + ... + x[n-1]: from 2 kLanes elements on in kLanes partial sums (element j to lane j % kLanes),
// which vectorises where one running sum is a chain of dependent adds; fewer in one running sum, which
// costs less than setting up and summing the lanes. The same bits on every vector width.
template <typename T>
T lane_total(const T* __restrict__ x, int64_t n) {
  if (n < 2 * kLanes<T>) {
    T sum = T(0);
    for (int64_t j = 0; j < n; ++j) sum += x[j];
    return sum;
  }
  T lane[kLanes<T>] = {};
  int64_t j = 0;
  for (; j + kLanes<T> <= n; j += kLanes<T>)
    for (int64_t l = 0; l < kLanes<T>; ++l) lane[l] += x[j + l];
  for (int64_t l = 0; j < n; ++j, ++l) lane[l] += x[j];
  return lane_sum(lane);
}

}  // namespace gls
