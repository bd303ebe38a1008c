// Vectorisation of the CPU kernels' row loops. Include before the gls math headers.
//
// 1. GCC keeps selects such as `g > 0 ? g : 0` as branches (no SIMD) under its default
//    -ftrapping-math, since a vector compare could raise a floating-point exception the scalar branch
//    would not; no gls or torch code unmasks FP exceptions, so we allow it for the code that follows.
//    (clang if-converts these selects without it.)
// 2. The build targets baseline x86-64 (SSE2); GLS_SIMD_CLONES compiles a function also for AVX2 and
//    AVX-512 and picks the best at load time (ifunc), so the loops use the machine's full vector width.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define GLS_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GLS_SIMD_CLONES
#endif
