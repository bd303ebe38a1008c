// Philox4x32-10 and the Gaussian stream built on it (docs/design.md §4), shared verbatim by the CPU
// and CUDA kernels.
//
// Element i of member m's stream, for seed s and purpose q:
//   words  = philox4x32_10(counter = (b & 0xffffffff, b >> 32, m, q), key = (s & 0xffffffff, s >> 32)),
//            b = i / 4, lane = i % 4;
//   u      = ((x >> 8) + 0.5) * 2^-24, evaluated in float32 (round to nearest even): in (0, 1];
//   normal = Box-Muller on lanes (0, 1) and (2, 3): r = sqrt(-2 ln u_even),
//            n_even = r cos(2pi u_odd), n_odd = r sin(2pi u_odd), all in float32.
// The u32 words are bit-identical on every backend; the normals differ only by the ulps of the
// platform's logf / cosf / sinf.
#pragma once

#include <cmath>
#include <cstdint>

#include "gls/macros.h"

namespace gls {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // Weyl key increments
constexpr float kTwoPi = 6.2831855f;                                  // 2*pi rounded to float32

struct U32x4 {
  uint32_t v[4];
};

GLS_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__) || defined(GLS_CUDA_EMU)  // the device intrinsic, also in the emulated CUDA build
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

// The Philox4x32 bijection with 10 rounds (Salmon et al. 2011, Random123's philox4x32_R(10, ...)).
GLS_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c.v[0], hi0, lo0);
    mulhilo32(kPhiloxM1, c.v[2], hi1, lo1);
    c = U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c;
}

// The four words of block `block` of member `member`'s stream (purpose word `purpose`).
GLS_HD U32x4 philox_block(uint64_t block, uint32_t member, uint32_t purpose, uint64_t seed) {
  const U32x4 counter{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), member, purpose}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// ((x >> 8) + 0.5) * 2^-24 in float32: the int -> float conversion and the power-of-two scale are
// exact, the single addition rounds, so every backend gets the same float.
GLS_HD float philox_uniform(uint32_t x) {
  return static_cast<float>(x >> 8) * 5.9604644775390625e-8f + 2.98023223876953125e-8f;
}

// Box-Muller on one lane pair: `radius_word` (even lane) sets the radius, `angle_word` (odd lane) the angle.
GLS_HD void box_muller(uint32_t radius_word, uint32_t angle_word, float& n_even, float& n_odd) {
  const float r = sqrtf(-2.0f * logf(philox_uniform(radius_word)));
  const float t = kTwoPi * philox_uniform(angle_word);
  n_even = r * cosf(t);
  n_odd = r * sinf(t);
}

// The four normals of block `block` of a member's stream (elements 4*block .. 4*block + 3).
GLS_HD void philox_normal4(uint64_t block, uint32_t member, uint32_t purpose, uint64_t seed, float n[4]) {
  const U32x4 x = philox_block(block, member, purpose, seed);
  box_muller(x.v[0], x.v[1], n[0], n[1]);
  box_muller(x.v[2], x.v[3], n[2], n[3]);
}

// Population layout (all kernels): row r < R is +eps of members[r]; with antithetic, row R + r is -eps of
// the same member, so the kernels generate each stream once and use it for both rows of a pair.

}  // namespace gls
