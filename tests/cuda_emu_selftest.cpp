// The CUDA emulation (csrc/emu) on kernels whose results are known, and on launches it must refuse.
// Built and run by tests/test_cuda_emu.py; prints one line per check and exits non-zero on a failure.
#include "cuda_emu.h"

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
  failures += !ok;
}

// The launch must throw, with `words` in its message.
void check_refused(const std::function<void()>& launch, const std::string& words, const std::string& what) {
  try {
    launch();
  } catch (const std::runtime_error& e) {
    const bool ok = std::string(e.what()).find(words) != std::string::npos;
    check(ok, what + (ok ? "" : std::string(" (message: ") + e.what() + ")"));
    return;
  }
  check(false, what + " (not refused)");
}

// Tree reduction in static shared memory, with a barrier per level; a 3-D block of 4 x 8 x 8 threads.
__global__ void block_tree_sum(const int* in, int* out) {
  __shared__ int s[256];
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int n = blockDim.x * blockDim.y * blockDim.z;
  s[t] = in[blockIdx.x * n + t];
  __syncthreads();
  for (int half = n / 2; half > 0; half /= 2) {
    if (t < half) s[t] += s[t + half];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Warp sums by xor and by down shuffles, and a shuffle within groups of 8 lanes.
__global__ void warp_shuffles(const double* in, double* xor_sum, double* down_sum, int* group_src) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  double a = in[t], b = in[t];
  for (int off = 16; off > 0; off /= 2) a += __shfl_xor_sync(0xffffffffu, a, off);
  for (int off = 16; off > 0; off /= 2) b += __shfl_down_sync(0xffffffffu, b, off);
  xor_sum[t] = a;
  if (threadIdx.x % 32 == 0) down_sum[t / 32] = b;
  group_src[t] = __shfl_down_sync(0xffffffffu, int(threadIdx.x), 5, 8);  // lanes 3-7 of a group of 8 keep theirs
}

// Float and integer atomics from every thread of many blocks (run concurrently on the OpenMP threads).
__global__ void atomics(float* fsum, unsigned long long* isum) {
  atomicAdd(fsum, 1.0f);
  atomicAdd(isum, static_cast<unsigned long long>(blockIdx.x));
}

// Dynamic shared memory: thread t writes slot t, then reads its neighbour's after the barrier.
__global__ void dynamic_rotate(int* out) {
  GLS_DYNAMIC_SHARED(int, s);
  s[threadIdx.x] = 10 * threadIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x] + int(blockIdx.x);
}

// Threads that exit before a barrier do not hold the others back (as on a GPU since sm_70).
__global__ void exit_before_barrier(int* out) {
  __shared__ int s[64];
  if (threadIdx.x >= 40) return;
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[39 - threadIdx.x];
}

__global__ void shuffle_after_lane_exit(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void barrier_against_shuffle(float* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  }
}

__global__ void full_mask_partial_warp(float* out) { out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1); }

__global__ void shuffle_outside_mask(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.0f, 16);
}

__global__ void nothing(int*) {}

}  // namespace

int main() {
  omp_set_num_threads(2);
  {
    const int blocks = 5, n = 256;
    std::vector<int> in(blocks * n), out(blocks, -1);
    for (int i = 0; i < blocks * n; ++i) in[i] = i;
    gls_emu::launcher("block_tree_sum", blocks, dim3(4, 8, 8), 0, block_tree_sum)(in.data(), out.data());
    bool ok = true;
    for (int b = 0; b < blocks; ++b) ok &= out[b] == n * b * n + n * (n - 1) / 2;
    check(ok, "static shared memory and __syncthreads: block sums of a 3-D block");
  }
  {
    const int blocks = 3, n = 96;  // three warps a block
    std::vector<double> in(blocks * n), xs(blocks * n), ds(blocks * n / 32);
    std::vector<int> src(blocks * n);
    for (int i = 0; i < blocks * n; ++i) in[i] = std::ldexp(1.0, i % 40) + i;
    gls_emu::launcher("warp_shuffles", blocks, n, 0, warp_shuffles)(in.data(), xs.data(), ds.data(), src.data());
    bool ok_xor = true, ok_down = true, ok_width = true;
    for (int w = 0; w < blocks * n / 32; ++w) {
      double want = 0;
      for (int l = 0; l < 32; ++l) want += in[32 * w + l];
      for (int l = 0; l < 32; ++l) ok_xor &= xs[32 * w + l] == want;
      ok_down &= ds[w] == want;
    }
    for (int i = 0; i < blocks * n; ++i) {
      const int lane = i % n % 32;
      ok_width &= src[i] == (lane % 8 + 5 < 8 ? i % n + 5 : i % n);
    }
    check(ok_xor, "__shfl_xor_sync: every lane holds its warp's sum");
    check(ok_down, "__shfl_down_sync: lane 0 holds its warp's sum");
    check(ok_width, "__shfl_down_sync with width 8: lanes past their group keep their value");
  }
  {
    float fsum = 0;
    unsigned long long isum = 0;
    const int blocks = 200, n = 128;
    gls_emu::launcher("atomics", blocks, n, 0, atomics)(&fsum, &isum);
    check(fsum == float(blocks * n) && isum == 1ull * n * blocks * (blocks - 1) / 2, "atomicAdd on float and 64-bit integers");
  }
  {
    const int blocks = 4, n = 50;
    std::vector<int> out(blocks * n);
    gls_emu::launcher("dynamic_rotate", blocks, n, n * sizeof(int), dynamic_rotate)(out.data());
    bool ok = true;
    for (int i = 0; i < blocks * n; ++i) ok &= out[i] == 10 * ((i % n + 1) % n) + i / n;
    check(ok, "dynamic shared memory of the launch's size");
  }
  {
    std::vector<int> out(64, -1);
    gls_emu::launcher("exit_before_barrier", 1, 64, 0, exit_before_barrier)(out.data());
    bool ok = true;
    for (int t = 0; t < 40; ++t) ok &= out[t] == 39 - t;
    for (int t = 40; t < 64; ++t) ok &= out[t] == -1;
    check(ok, "threads that exited do not hold a barrier back");
  }
  std::vector<float> f(64);
  check_refused([&] { gls_emu::launcher("shuffle_after_lane_exit", 1, 32, 0, shuffle_after_lane_exit)(f.data()); },
                "which has exited", "a shuffle waiting for a lane that exited is refused");
  check_refused([&] { gls_emu::launcher("barrier_against_shuffle", 1, 32, 0, barrier_against_shuffle)(f.data()); },
                "divergent synchronisation", "__syncthreads in one branch and a shuffle in the other is refused");
  check_refused([&] { gls_emu::launcher("full_mask_partial_warp", 1, 48, 0, full_mask_partial_warp)(f.data()); },
                "does not exist", "a full mask in a partial warp is refused");
  check_refused([&] { gls_emu::launcher("shuffle_outside_mask", 1, 32, 0, shuffle_outside_mask)(f.data()); },
                "outside its mask", "a shuffle reading a lane outside its mask is refused");
  check_refused([&] { gls_emu::launcher("nothing", 1, 2048, 0, nothing)(nullptr); }, "threads a block",
                "2048 threads a block are refused");
  check_refused([&] { gls_emu::launcher("nothing", dim3(1, 70000), 32, 0, nothing)(nullptr); }, "grid axes",
                "a grid y axis past 65535 is refused");
  check_refused([&] { gls_emu::launcher("nothing", 0, 32, 0, nothing)(nullptr); }, "empty grid", "an empty grid is refused");
  check_refused([&] { gls_emu::launcher("nothing", 1, 32, 64 * 1024, nothing)(nullptr); }, "dynamic shared memory",
                "64 KiB of dynamic shared memory are refused");
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
