// Elementwise math of the fused bound-propagation ops (docs/design.md §3), shared verbatim by the
// CPU and CUDA kernels so the CPU tests exercise the code the GPU runs.
//
// Sign split: g = pos + neg with pos = max(g, 0) and neg = g - pos = min(g, 0). A lower bound through
// the ReLU lines a_l z + c_l <= y <= a_u z + c_u takes (a_l, c_l) on pos and (a_u, c_u) on neg; a lower
// bound over a box takes x_lo on pos and x_hi on neg. Plain value functions, no branches and no
// out-parameters, so the CPU loops using them vectorise.
#pragma once

#include "gls/macros.h"

namespace gls {

template <typename T>
GLS_HD T positive_part(T g) {
  return g > T(0) ? g : T(0);
}

// pos * on_pos + neg * on_neg: the new coefficient (with a_l, a_u), the bias term (with c_l, c_u) or the
// box bound (with x_lo, x_hi).
template <typename T>
GLS_HD T sign_split(T pos, T neg, T on_pos, T on_neg) {
  return pos * on_pos + neg * on_neg;
}

template <typename T>
GLS_HD T abs_value(T w) {
  return w < T(0) ? -w : w;
}

}  // namespace gls
