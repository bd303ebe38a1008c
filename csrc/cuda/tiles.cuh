// Tile geometry shared by the CUDA GEMM-shaped bound kernels (backsub_linear_relu.cu, ibp_affine.cu).
//
// A 256-thread block computes a kTileM x kTileN output tile; thread (ty, tx) = (tid / 16, tid % 16) owns
// the 4 x 4 outputs at rows ty + 16 i and columns tx + 16 j, so a warp's shared-memory reads are
// broadcasts (rows) or consecutive (columns) and its global writes are 16-wide runs. The contraction
// advances kTileK at a time through shared memory.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

namespace gls::cuda_tiles {

constexpr int kThreads = 256;
constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
constexpr int kSub = 4;  // outputs per thread along each axis
constexpr int kLanes = 16;  // threads along each axis

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launch grid dimension, refused clearly where CUDA's limit would be exceeded.
inline unsigned grid_dim(const char* op, const char* what, int64_t n, int64_t limit) {
  TORCH_CHECK(n <= limit, op, ": ", what, " needs ", n, " thread blocks along one grid axis, more than CUDA's ", limit);
  return static_cast<unsigned>(n);
}

}  // namespace gls::cuda_tiles
