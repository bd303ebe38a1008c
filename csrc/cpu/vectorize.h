// Include before the gls math headers in CPU kernels. GCC keeps selects such as `g > 0 ? g : 0` as
// branches (no SIMD) under its default -ftrapping-math, since a vector compare could raise a floating
// point exception the scalar branch would not; no gls or torch code unmasks FP exceptions, so we
// allow it for the code that follows. (clang if-converts these selects without it.)
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
