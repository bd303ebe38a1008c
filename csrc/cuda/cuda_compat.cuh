// What csrc/cuda's files need from the CUDA toolchain, in one place, for the two builds of the same code:
// - nvcc (gls._C, GLS_WITH_CUDA): the real thing, registered for gls::<op> on CUDA tensors;
// - the CUDA emulation (gls._C_cuda_emu, GLS_CUDA_EMU; csrc/emu/cuda_emu.h): g++ compiles the same files
//   for the CPU, registered for gls_cuda_emu::<op> on CPU tensors, so the tests run the kernels in CI.
// Each .cu file names the kernel launch, the device, the guard, the stream and its registration through
// these macros only, so the two builds differ nowhere else.
#pragma once

#if defined(GLS_CUDA_EMU)
#include "cuda_emu.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <c10/core/DeviceType.h>
#include <torch/library.h>

namespace gls {

#if defined(GLS_CUDA_EMU)
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;  // the emulation runs on CPU tensors
inline int current_stream() { return 0; }                         // one in-order stream: launches run at once
// kernel<<<grid, block, dynamic_shared, stream>>>(args...) as GLS_LAUNCH(grid, block, dynamic_shared, stream, kernel)(args...)
#define GLS_LAUNCH(grid, block, dynamic_shared, stream, ...) \
  (void)(stream), ::gls_emu::launcher(#__VA_ARGS__, grid, block, dynamic_shared, __VA_ARGS__)
#define GLS_DEVICE_GUARD(tensor) (void)(tensor)
#define GLS_LAUNCH_CHECK() (void)0  // the emulated launch throws on error
#define GLS_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(gls_cuda_emu, CPU, m)
#else
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
inline c10::cuda::CUDAStream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#define GLS_LAUNCH(grid, block, dynamic_shared, stream, ...) __VA_ARGS__<<<grid, block, dynamic_shared, stream>>>
#define GLS_DEVICE_GUARD(tensor) const c10::cuda::CUDAGuard gls_device_guard((tensor).device())
#define GLS_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define GLS_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(gls, CUDA, m)
// A kernel's dynamic shared memory as a T* (cuda_emu.h defines the emulation's form).
#define GLS_DYNAMIC_SHARED(T, name)                                 \
  extern __shared__ __align__(16) unsigned char gls_dynamic_smem[]; \
  T* name = reinterpret_cast<T*>(gls_dynamic_smem)
#endif

}  // namespace gls
