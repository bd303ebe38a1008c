// Portability macros for math shared by the CPU and CUDA builds.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GLS_HD __host__ __device__ __forceinline__
#else
#define GLS_HD inline
#endif
