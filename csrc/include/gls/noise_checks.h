// Input validation of the noise ops, shared by the CPU and CUDA kernels (host code).
//
// Each check is a TORCH_CHECK naming the op and the argument; `device` is the kernel's device type,
// so a tensor on the wrong kind of device fails clearly instead of being read as host memory.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace gls {

inline void check_philox_args(const at::Tensor& counter, const at::Tensor& key, c10::DeviceType device) {
  TORCH_CHECK(counter.dim() >= 1 && counter.size(-1) == 4, "philox4x32_10: counter must have shape (..., 4), got ", counter.sizes());
  TORCH_CHECK(key.dim() == counter.dim() && key.size(-1) == 2 && key.sizes().slice(0, key.dim() - 1) == counter.sizes().slice(0, counter.dim() - 1),
              "philox4x32_10: key must have shape (..., 2) with the leading shape of counter ", counter.sizes(), ", got ", key.sizes());
  TORCH_CHECK(counter.scalar_type() == at::kLong && key.scalar_type() == at::kLong, "philox4x32_10: counter and key must be int64 tensors of u32 words");
  TORCH_CHECK(counter.device().type() == device && key.device() == counter.device(), "philox4x32_10: counter and key must be on the same ",
              c10::DeviceTypeName(device), " device, got ", counter.device(), " and ", key.device());
}

inline void check_noise_dim(int64_t d, const char* op) {
  TORCH_CHECK(d >= 1, op, ": the number of elements d must be >= 1, got ", d);
}

// members: a 1-D int64 tensor of member words, on the device of `like` (itself of the kernel's type).
inline void check_noise_members(const at::Tensor& members, const at::Tensor& like, c10::DeviceType device, const char* op) {
  TORCH_CHECK(members.dim() == 1 && members.scalar_type() == at::kLong, op, ": members must be a 1-D int64 tensor of member words, got ",
              members.scalar_type(), " of shape ", members.sizes());
  TORCH_CHECK(like.device().type() == device && members.device() == like.device(), op, ": all tensors must be on the same ",
              c10::DeviceTypeName(device), " device, got ", like.device(), " and members on ", members.device());
}

inline void check_noise_theta(const at::Tensor& theta) {
  TORCH_CHECK(theta.dim() == 1 && theta.size(0) >= 1, "noise_perturb: theta must be a non-empty flat (d,) vector, got shape ", theta.sizes());
}

// weights (P,) or (P, d), P the population rows of `members` (twice as many with antithetic pairs).
inline void check_noise_weights(const at::Tensor& weights, const at::Tensor& members, int64_t d, bool antithetic, const char* op) {
  const int64_t rows = antithetic ? 2 * members.size(0) : members.size(0);
  TORCH_CHECK((weights.dim() == 1 || (weights.dim() == 2 && weights.size(1) == d)) && weights.size(0) == rows, op,
              ": weights must be (P,) or (P, d) with P = ", rows, " population rows and d = ", d, ", got ", weights.sizes());
}

// sigma a scalar or (d,), with the dtype and device of `like`; returns its stride (0 or 1) along d.
inline int64_t check_noise_sigma(const at::Tensor& sigma, int64_t d, const at::Tensor& like, const char* op) {
  TORCH_CHECK(sigma.numel() == 1 || (sigma.dim() == 1 && sigma.size(0) == d), op, ": sigma must be a scalar or have shape (d,) = (", d,
              ",), got ", sigma.sizes());
  TORCH_CHECK(sigma.scalar_type() == like.scalar_type(), op, ": sigma must have dtype ", like.scalar_type(), ", got ", sigma.scalar_type());
  TORCH_CHECK(sigma.device() == like.device(), op, ": sigma must be on ", like.device(), ", got ", sigma.device());
  return sigma.numel() == 1 ? 0 : 1;
}

}  // namespace gls
