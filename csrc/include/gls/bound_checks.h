// Input validation of the bound-propagation ops, shared by the CPU and CUDA kernels (host code).
//
// Every check is a TORCH_CHECK naming the op, the argument and what was expected, so bad input fails
// clearly instead of reading out of bounds. Population axes may be 1 where docs/design.md §2 allows sharing
// (weights, biases, relaxation, IBP inputs); kernels then read them with a zero member stride.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <utility>

namespace gls {

// Same floating dtype (float or double) and same device (of the kernel's type) for every tensor.
inline void check_tensors(const char* op, c10::DeviceType device,
                          std::initializer_list<std::pair<const char*, const at::Tensor*>> args) {
  const auto& [name0, t0] = *args.begin();
  TORCH_CHECK(t0->scalar_type() == at::kFloat || t0->scalar_type() == at::kDouble, op, ": ", name0,
              " must be float32 or float64, got ", t0->scalar_type());
  for (const auto& [name, t] : args) {
    TORCH_CHECK(t->device().type() == device && t->device() == t0->device(), op,
                ": all tensors must be on the same ", c10::DeviceTypeName(device), " device, got ", name0, " on ",
                t0->device(), " and ", name, " on ", t->device());
    TORCH_CHECK(t->scalar_type() == t0->scalar_type(), op, ": all tensors must have the same dtype, got ", name0,
                " ", t0->scalar_type(), " and ", name, " ", t->scalar_type());
  }
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* layout) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", layout, ", got shape ", t.sizes());
}

// A population axis that is either P or 1 (shared).
inline void check_members(const char* op, const char* name, int64_t got, int64_t P) {
  TORCH_CHECK(got == P || got == 1, op, ": ", name, " has ", got, " population members, expected ", P, " or 1");
}

// b (P|1, n_out)? of an op whose rows have n_out entries (`what` names that axis), then one dtype and
// device for every tensor; returns whether b is shared by the population.
inline bool check_bias_and_tensors(const char* op, c10::DeviceType device, const c10::optional<at::Tensor>& b,
                                   const char* what, int64_t n_out, int64_t P, const at::Tensor& lam,
                                   const at::Tensor& W, const at::Tensor& a_l, const at::Tensor& c_l,
                                   const at::Tensor& a_u, const at::Tensor& c_u) {
  if (!b.has_value()) {
    check_tensors(op, device, {{"lam", &lam}, {"W", &W}, {"a_l", &a_l}, {"c_l", &c_l}, {"a_u", &a_u}, {"c_u", &c_u}});
    return true;
  }
  check_dim(op, "b", *b, 2, what[0] == 'C' ? "(P|1,C_out)" : "(P|1,N_out)");
  check_members(op, "b", b->size(0), P);
  TORCH_CHECK(b->size(1) == n_out, op, ": b must have ", what, " = ", n_out, " entries, got shape ", b->sizes());
  check_tensors(op, device, {{"lam", &lam}, {"W", &W}, {"b", &*b}, {"a_l", &a_l}, {"c_l", &c_l}, {"a_u", &a_u},
                             {"c_u", &c_u}});
  return b->size(0) == 1;
}

struct BacksubShape {
  int64_t P, B, S, n_out, n_in;
  bool w_shared, b_shared, relax_shared;
};

// lam (P,B,S,N_out), W (P|1,N_out,N_in), b (P|1,N_out)?, a_l/c_l/a_u/c_u (P|1,B,N_in).
inline BacksubShape check_backsub(c10::DeviceType device, const at::Tensor& lam, const at::Tensor& W,
                                  const c10::optional<at::Tensor>& b, const at::Tensor& a_l, const at::Tensor& c_l,
                                  const at::Tensor& a_u, const at::Tensor& c_u) {
  const char* op = "backsub_linear_relu";
  check_dim(op, "lam", lam, 4, "(P,B,S,N_out)");
  check_dim(op, "W", W, 3, "(P|1,N_out,N_in)");
  check_dim(op, "a_l", a_l, 3, "(P|1,B,N_in)");
  BacksubShape s{lam.size(0), lam.size(1), lam.size(2), lam.size(3), W.size(2), W.size(0) == 1, true,
                 a_l.size(0) == 1};
  check_members(op, "W", W.size(0), s.P);
  TORCH_CHECK(W.size(1) == s.n_out, op, ": W must have N_out = lam.size(-1) = ", s.n_out, " rows, got shape ",
              W.sizes());
  TORCH_CHECK(a_l.size(1) == s.B && a_l.size(2) == s.n_in, op, ": a_l must have shape (P|1, B=", s.B,
              ", N_in=", s.n_in, "), got ", a_l.sizes());
  check_members(op, "a_l", a_l.size(0), s.P);
  for (const auto& [name, t] : {std::pair{"c_l", &c_l}, {"a_u", &a_u}, {"c_u", &c_u}})
    TORCH_CHECK(t->sizes() == a_l.sizes(), op, ": ", name, " must have the shape of a_l ", a_l.sizes(), ", got ",
                t->sizes());
  s.b_shared = check_bias_and_tensors(op, device, b, "N_out", s.n_out, s.P, lam, W, a_l, c_l, a_u, c_u);
  return s;
}

struct ConcretizeShape {
  int64_t P, B, S, N;
};

// lam (P,B,S,N), bias (P,B,S), x_lo and x_hi (B,N).
inline ConcretizeShape check_concretize(c10::DeviceType device, const at::Tensor& lam, const at::Tensor& bias,
                                        const at::Tensor& x_lo, const at::Tensor& x_hi) {
  const char* op = "concretize";
  check_dim(op, "lam", lam, 4, "(P,B,S,N)");
  const ConcretizeShape s{lam.size(0), lam.size(1), lam.size(2), lam.size(3)};
  TORCH_CHECK(bias.sizes() == lam.sizes().slice(0, 3), op, ": bias must have shape (P,B,S) = ",
              lam.sizes().slice(0, 3), ", got ", bias.sizes());
  TORCH_CHECK(x_lo.dim() == 2 && x_lo.size(0) == s.B && x_lo.size(1) == s.N, op, ": x_lo must have shape (B=", s.B,
              ", N=", s.N, "), got ", x_lo.sizes());
  TORCH_CHECK(x_hi.sizes() == x_lo.sizes(), op, ": x_hi must have the shape of x_lo ", x_lo.sizes(), ", got ",
              x_hi.sizes());
  check_tensors(op, device, {{"lam", &lam}, {"bias", &bias}, {"x_lo", &x_lo}, {"x_hi", &x_hi}});
  return s;
}

struct IbpAffineShape {
  int64_t P, B, n_in, n_out;
  bool mid_shared, rad_shared, w_shared, b_shared;
};

// mid and rad (P|1,B,N_in), W (P|1,N_out,N_in), b (P|1,N_out)?; P is the largest of their member counts.
inline IbpAffineShape check_ibp_affine(c10::DeviceType device, const at::Tensor& mid, const at::Tensor& rad,
                                       const at::Tensor& W, const c10::optional<at::Tensor>& b) {
  const char* op = "ibp_affine";
  check_dim(op, "mid", mid, 3, "(P|1,B,N_in)");
  check_dim(op, "rad", rad, 3, "(P|1,B,N_in)");
  check_dim(op, "W", W, 3, "(P|1,N_out,N_in)");
  if (b.has_value()) check_dim(op, "b", *b, 2, "(P|1,N_out)");
  int64_t P = 1;  // members broadcast like batch dimensions: P is the count that is not 1, if any
  for (const int64_t m : {mid.size(0), rad.size(0), W.size(0), b.has_value() ? b->size(0) : int64_t(1)})
    if (m != 1) P = m;
  IbpAffineShape s{P, mid.size(1), mid.size(2), W.size(1), mid.size(0) == 1, rad.size(0) == 1, W.size(0) == 1, true};
  check_members(op, "mid", mid.size(0), P);
  check_members(op, "rad", rad.size(0), P);
  check_members(op, "W", W.size(0), P);
  TORCH_CHECK(rad.size(1) == s.B && rad.size(2) == s.n_in, op, ": rad must have shape (P|1, B=", s.B, ", N_in=",
              s.n_in, ") like mid, got ", rad.sizes());
  TORCH_CHECK(W.size(2) == s.n_in, op, ": W must have N_in = mid.size(-1) = ", s.n_in, " columns, got shape ",
              W.sizes());
  if (b.has_value()) {
    check_members(op, "b", b->size(0), P);
    TORCH_CHECK(b->size(1) == s.n_out, op, ": b must have N_out = W.size(1) = ", s.n_out, " entries, got shape ",
                b->sizes());
    s.b_shared = b->size(0) == 1;
    check_tensors(op, device, {{"mid", &mid}, {"rad", &rad}, {"W", &W}, {"b", &*b}});
  } else {
    check_tensors(op, device, {{"mid", &mid}, {"rad", &rad}, {"W", &W}});
  }
  return s;
}


struct BacksubConvShape {
  int64_t P, B, R, c_out, h, w, c_in, kh, kw, H, W, h2, w2, s0, s1, d0, d1;
  bool w_shared, b_shared, relax_shared;
};

// lam (P,B,R,C_out,h,w), W (P|1,C_out,C_in,kh,kw), b (P|1,C_out)?, a_l/c_l/a_u/c_u (P|1,B,C_in,H,W),
// origin (P,B,R,2) int64, stride and dilation (2) positive. The windows on z_in are
// h2 = (h-1)*stride + dilation*(kh-1) + 1 by w2 likewise.
inline BacksubConvShape check_backsub_conv(c10::DeviceType device, const at::Tensor& lam, const at::Tensor& W,
                                           const c10::optional<at::Tensor>& b, const at::Tensor& a_l,
                                           const at::Tensor& c_l, const at::Tensor& a_u, const at::Tensor& c_u,
                                           const at::Tensor& origin, at::IntArrayRef stride, at::IntArrayRef dilation) {
  const char* op = "backsub_conv_relu";
  check_dim(op, "lam", lam, 6, "(P,B,R,C_out,h,w)");
  check_dim(op, "W", W, 5, "(P|1,C_out,C_in,kh,kw)");
  check_dim(op, "a_l", a_l, 5, "(P|1,B,C_in,H,W)");
  TORCH_CHECK(stride.size() == 2 && dilation.size() == 2, op, ": stride and dilation must have 2 entries, got ",
              stride, " and ", dilation);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0, op,
              ": stride and dilation must be positive, got ", stride, " and ", dilation);
  BacksubConvShape s{lam.size(0), lam.size(1), lam.size(2), lam.size(3), lam.size(4), lam.size(5), W.size(2),
                     W.size(3),   W.size(4),   a_l.size(3), a_l.size(4), 0, 0, stride[0], stride[1], dilation[0],
                     dilation[1], W.size(0) == 1, true, a_l.size(0) == 1};
  s.h2 = (s.h - 1) * s.s0 + s.d0 * (s.kh - 1) + 1;
  s.w2 = (s.w - 1) * s.s1 + s.d1 * (s.kw - 1) + 1;
  check_members(op, "W", W.size(0), s.P);
  TORCH_CHECK(W.size(1) == s.c_out, op, ": W must have C_out = lam.size(3) = ", s.c_out, " filters, got shape ",
              W.sizes());
  check_members(op, "a_l", a_l.size(0), s.P);
  TORCH_CHECK(a_l.size(1) == s.B && a_l.size(2) == s.c_in, op, ": a_l must have shape (P|1, B=", s.B, ", C_in=", s.c_in,
              ", H, W), got ", a_l.sizes());
  for (const auto& [name, t] : {std::pair{"c_l", &c_l}, {"a_u", &a_u}, {"c_u", &c_u}})
    TORCH_CHECK(t->sizes() == a_l.sizes(), op, ": ", name, " must have the shape of a_l ", a_l.sizes(), ", got ",
                t->sizes());
  TORCH_CHECK(origin.scalar_type() == at::kLong && origin.dim() == 4 && origin.size(0) == s.P && origin.size(1) == s.B &&
                  origin.size(2) == s.R && origin.size(3) == 2,
              op, ": origin must be int64 of shape (P=", s.P, ", B=", s.B, ", R=", s.R, ", 2), got ",
              origin.scalar_type(), " ", origin.sizes());
  TORCH_CHECK(origin.device() == lam.device(), op, ": origin must be on ", lam.device(), ", got ", origin.device());
  s.b_shared = check_bias_and_tensors(op, device, b, "C_out", s.c_out, s.P, lam, W, a_l, c_l, a_u, c_u);
  return s;
}

// The kept window and upstream gradients of backsub_conv_relu_backward: window and grad_lam shaped like
// the op's first output (grad_lam empty when lam' has no gradient), grad_bias (P,B,R), all of lam's dtype
// and device.
inline void check_backsub_conv_grads(c10::DeviceType device, const BacksubConvShape& s, const at::Tensor& lam,
                                     const at::Tensor& window, const at::Tensor& grad_lam, const at::Tensor& grad_bias) {
  const char* op = "backsub_conv_relu_backward";
  const std::array<int64_t, 6> windows{s.P, s.B, s.R, s.c_in, s.h2, s.w2};
  TORCH_CHECK(window.sizes() == at::IntArrayRef(windows), op, ": window must be the forward's kept window, of the shape of its first "
              "output, got ", window.sizes());
  TORCH_CHECK(grad_lam.numel() == 0 || grad_lam.sizes() == at::IntArrayRef(windows), op,
              ": grad_lam must have the shape of the op's first output (or be empty: no gradient), got ",
              grad_lam.sizes());
  TORCH_CHECK(grad_bias.sizes() == at::IntArrayRef({s.P, s.B, s.R}), op, ": grad_bias must have shape (P,B,R), got ",
              grad_bias.sizes());
  check_tensors(op, device, {{"lam", &lam}, {"window", &window}, {"grad_lam", &grad_lam}, {"grad_bias", &grad_bias}});
}

}  // namespace gls
