// The CUDA execution model on a CPU, for running csrc/cuda's unchanged kernel code in tests.
//
// A launch runs every block of the grid; the blocks are spread over OpenMP threads, and the threads of
// one block are fibres (own stacks, switched in user space) that one OS thread runs in turn, each until
// it reaches a barrier, a warp-synchronous call or its end. So a block behaves as on a GPU wherever the
// CUDA programming model defines the behaviour:
// - threadIdx, blockIdx, blockDim and gridDim are per fibre (thread_local, switched with the fibre);
// - __shared__ is `static thread_local`: one copy per OS thread, so per running block; dynamic shared
//   memory (GLS_DYNAMIC_SHARED) is a per-launch buffer;
// - __syncthreads waits for every thread of the block that has not exited;
// - warp shuffles and __syncwarp exchange values among 32-lane warps, lanes = linear thread id % 32;
// - atomics are std::atomic_ref operations (blocks run concurrently on several OS threads).
// What the model leaves undefined is an error of the launch, reported by the launch, instead of being
// silently tolerated: a barrier some live thread of the block never reaches, a warp-synchronous call
// whose mask names a lane that exited, is waiting elsewhere, does not exist or passed another mask, a
// shuffle reading a lane outside its mask, and launch configurations a GPU refuses (empty grids,
// more than 1024 threads a block, grid axes past CUDA's limits, over 48 KiB of dynamic shared memory).
// What it cannot see: data races between threads of a block (the fibres run one at a time), shared
// memory read before any thread of the block wrote it (a static copy keeps the last block's values),
// and out-of-bounds global accesses.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
// A kernel's dynamic shared memory (extern __shared__ on a GPU) as a T*; csrc/cuda/cuda_compat.cuh has the nvcc form.
#define GLS_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::gls_emu::dynamic_shared())

namespace gls_emu {

constexpr int kWarpSize = 32;

struct LaunchConfig {
  dim3 grid, block;
  std::size_t dynamic_shared;
};

// Runs body(ctx) once per thread of every block of the grid; throws std::runtime_error naming the
// launch and the first violation of the execution model found.
void run_grid(const char* kernel, const LaunchConfig& cfg, void (*body)(void*), void* ctx);

// This block's dynamic shared memory (LaunchConfig::dynamic_shared bytes, 16-byte aligned).
unsigned char* dynamic_shared();

// The calling thread waits until every live thread of its block has called it.
void sync_block();

// Warp-synchronous exchange: the calling lane offers `bits` and waits for every lane of `mask`; it
// gets the bits offered by lane `src` of its warp (which must be in the mask).
std::uint64_t warp_exchange(unsigned mask, std::uint64_t bits, int src);

inline int lane_id() {
  return static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % kWarpSize);
}

template <typename T>
T shuffle(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable_v<T>, "shuffles move up to 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <typename... P>
struct Launcher {
  const char* name;
  LaunchConfig cfg;
  void (*kernel)(P...);

  template <typename... A>
  void operator()(A&&... args) const {
    const std::tuple<P...> params(std::forward<A>(args)...);  // converted once, as the GPU's launch does
    auto body = [this, &params] { std::apply(kernel, params); };
    run_grid(name, cfg, [](void* f) { (*static_cast<decltype(body)*>(f))(); }, &body);
  }
};

template <typename... P>
Launcher<P...> launcher(const char* name, dim3 grid, dim3 block, std::size_t dynamic_shared, void (*kernel)(P...)) {
  return {name, {grid, block, dynamic_shared}, kernel};
}

}  // namespace gls_emu

inline void __syncthreads() { gls_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { gls_emu::warp_exchange(mask, 0, gls_emu::lane_id()); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = gls_emu::kWarpSize) {
  const int lane = gls_emu::lane_id();
  return gls_emu::shuffle(mask, v, lane - lane % width + src % width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = gls_emu::kWarpSize) {
  const int lane = gls_emu::lane_id(), src = lane ^ lane_mask;  // later groups of `width` lanes: own value
  return gls_emu::shuffle(mask, v, src < (lane / width + 1) * width ? src : lane);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = gls_emu::kWarpSize) {
  const int lane = gls_emu::lane_id(), src = lane + static_cast<int>(delta);
  return gls_emu::shuffle(mask, v, src < (lane / width + 1) * width ? src : lane);
}

template <typename T>
T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v, std::memory_order_relaxed);
}

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<std::uint64_t>(a) * b) >> 32);
}
