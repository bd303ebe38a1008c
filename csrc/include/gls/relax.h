// ReLU relaxations (docs/design.md §3), shared verbatim by the CPU and CUDA kernels.
//
// For pre-activation bounds l <= z <= u the relaxation is a pair of lines
//   a_l * z + c_l  <=  relu(z)  <=  a_u * z + c_u.
// Stable neurons are exact; unstable ones (l < 0 < u) depend on the method.
#pragma once

#include <cstdint>
#include <string_view>

#include "gls/macros.h"

namespace gls {

enum RelaxMethod : int64_t { kIBP = 0, kHBox = 1, kCrownIBP = 2, kDeepPoly = 3 };

// Method name -> code; -1 for an unknown name. "crown" is an alias of "deeppoly".
inline int64_t relax_method_code(std::string_view name) {
  if (name == "ibp") return kIBP;
  if (name == "hbox") return kHBox;
  if (name == "crown-ibp") return kCrownIBP;
  if (name == "deeppoly" || name == "crown") return kDeepPoly;
  return -1;
}

template <typename T>
GLS_HD void relu_relax(T l, T u, int64_t method, T& a_l, T& c_l, T& a_u, T& c_u) {
  if (l >= T(0)) {  // stably active: y = z
    a_l = T(1); c_l = T(0); a_u = T(1); c_u = T(0);
  } else if (u <= T(0)) {  // stably inactive: y = 0
    a_l = T(0); c_l = T(0); a_u = T(0); c_u = T(0);
  } else if (method == kIBP || method == kHBox) {  // box: 0 <= y <= u
    a_l = T(0); c_l = T(0); a_u = T(0); c_u = u;
  } else {  // triangle upper line, adaptive lower slope
    const T s = u / (u - l);
    // -l s and u (1 - s) are the same number in exact arithmetic; the larger keeps the line above
    // relu at both ends whatever the rounding, and is u (the box line) if u - l overflows (s = 0).
    const T c1 = -l * s, c2 = u * (T(1) - s);
    a_u = s; c_u = c1 >= c2 ? c1 : c2;
    a_l = (u > -l) ? T(1) : T(0); c_l = T(0);
  }
}

}  // namespace gls
