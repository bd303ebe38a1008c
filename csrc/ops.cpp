// Schemas of every gls op (TORCH_LIBRARY) and the Python module entry point of gls._C.
//
// Implementations register themselves per dispatch key next to their kernels, one file per op named for
// it: csrc/cpu/<op>.cpp (TORCH_LIBRARY_IMPL(gls, CPU, m)) and csrc/cuda/<op>.cu (GLS_CUDA_LIBRARY_IMPL(m)
// of csrc/cuda/cuda_compat.cuh); code shared by several ops sits in a header next to them. Fake (meta) kernels and autograd
// formulas are registered from Python: gls/meta/<op>.py.
//
// The emulated CUDA build (gls._C_cuda_emu, GLS_CUDA_EMU: csrc/cuda compiled for the CPU by g++,
// csrc/emu/) compiles this file too, and defines the same schemas as gls_cuda_emu::<op>.
#include <torch/library.h>

#if defined(GLS_CUDA_EMU)
#define GLS_OPS_NAMESPACE gls_cuda_emu
#define GLS_PY_INIT PyInit__C_cuda_emu
#define GLS_PY_NAME "_C_cuda_emu"
#else
#define GLS_OPS_NAMESPACE gls
#define GLS_PY_INIT PyInit__C
#define GLS_PY_NAME "_C"
#endif
#define GLS_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)  // expands the namespace macro before TORCH_LIBRARY pastes it

#ifndef GLS_NO_PYTHON  // the CMake build makes a plain library for torch.ops.load_library
#include <Python.h>

extern "C" {
// Importing gls._C loads this library, which runs the static registrations below.
PyObject* GLS_PY_INIT(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, GLS_PY_NAME, nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

GLS_LIBRARY(GLS_OPS_NAMESPACE, m) {
  // ---- bound propagation (gls/reference/bound_ops.py holds the definitions) ----
  // ReLU relaxation lines from pre-activation bounds, elementwise: (a_l, c_l, a_u, c_u).
  m.def("relu_relax(Tensor l, Tensor u, str method) -> (Tensor, Tensor, Tensor, Tensor)");
  // One back-substitution step through an affine layer (W, b) and the ReLU before it.
  // lam (P,B,S,N_out), W (P|1,N_out,N_in), b (P|1,N_out)?, relaxation (P,B,N_in) -> (lam (P,B,S,N_in), bias (P,B,S)).
  m.def("backsub_linear_relu(Tensor lam, Tensor W, Tensor? b, Tensor a_l, Tensor c_l, Tensor a_u, Tensor c_u) -> (Tensor, Tensor)");
  // The same step through a convolution, for rows kept as windows (gls/windows.py): lam (P,B,R,C_out,h,w),
  // W (P|1,C_out,C_in,kh,kw), b (P|1,C_out)?, relaxation maps (P|1,B,C_in,H,W), origin (P,B,R,2) int64 of each
  // row's window on the input map -> (lam (P,B,R,C_in,h',w'), bias (P,B,R), window); zero outside the map.
  // window: with keep_window, each row's transposed convolution g (P,B,R,C_in,h',w'), which the backward
  // reads instead of recomputing it; else an empty tensor.
  m.def("backsub_conv_relu(Tensor lam, Tensor W, Tensor? b, Tensor a_l, Tensor c_l, Tensor a_u, Tensor c_u, Tensor origin, int[2] stride, int[2] dilation, bool keep_window=False) -> (Tensor, Tensor, Tensor)");
  // Its closed-form backward, given the forward's kept window: (d_lam, d_W (P,...), d_b (P,C_out) or empty
  // without b, d_a_l, d_c_l, d_a_u, d_c_u (P,B,C_in,H,W)). grad_lam empty: lam' has no gradient (a
  // concretisation). d_lam is empty unless lam_grad, the four line gradients unless line_grads.
  m.def("backsub_conv_relu_backward(Tensor lam, Tensor W, Tensor? b, Tensor a_l, Tensor c_l, Tensor a_u, Tensor c_u, Tensor origin, int[2] stride, int[2] dilation, Tensor window, Tensor grad_lam, Tensor grad_bias, bool lam_grad, bool line_grads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Lower bound of lam . x + bias over the box [x_lo, x_hi]: lam (P,B,S,N), bias (P,B,S), x (B,N) -> (P,B,S).
  m.def("concretize(Tensor lam, Tensor bias, Tensor x_lo, Tensor x_hi) -> Tensor");
  // Interval step through an affine layer: mid (P|1,B,N_in), rad likewise, W (P|1,N_out,N_in), b (P|1,N_out)? -> (mid, rad) (P,B,N_out).
  m.def("ibp_affine(Tensor mid, Tensor rad, Tensor W, Tensor? b) -> (Tensor, Tensor)");
  // Fused backward epilogue of backsub_linear_relu: with g = lam W recomputed (never stored by the
  // forward), dg = grad_lam*a_l + grad_bias*c_l where g > 0, grad_lam*a_u + grad_bias*c_u where g < 0,
  // 0 where g == 0, and the relaxation gradients summed over specs: d_a_l = sum_s grad_lam*g^+,
  // d_c_l = sum_s grad_bias*g^+, d_a_u = sum_s grad_lam*g^-, d_c_u = sum_s grad_bias*g^-, each
  // (P,B,N_in) -> (dg, d_a_l, d_c_l, d_a_u, d_c_u).
  m.def("backsub_linear_relu_backward(Tensor lam, Tensor W, Tensor grad_lam, Tensor grad_bias, Tensor a_l, Tensor c_l, Tensor a_u, Tensor c_u) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // ---- noise (gls/reference/noise.py holds the definitions; docs/design.md §4) ----
  // Seeds are the signed 64-bit reinterpretation of the unsigned seed; members is an int64 (R,) tensor of
  // member words; with antithetic, populations have 2R rows (+eps of members, then -eps of the same members).
  // Philox4x32-10 block function on u32 words held in int64: counter (..., 4), key (..., 2) -> (..., 4).
  m.def("philox4x32_10(Tensor counter, Tensor key) -> Tensor");
  // Population normals (R or 2R, d), float32.
  m.def("noise_normal(Tensor members, int d, int seed, int purpose, bool antithetic) -> Tensor");
  // theta (d,) + sigma (scalar or (d,)) * eps_p -> (P, d) in theta's dtype.
  m.def("noise_perturb(Tensor theta, Tensor sigma, Tensor members, int seed, int purpose, bool antithetic) -> Tensor");
  // sum_p weights_p * sigma * eps_p -> (d,); weights (P,) or (P, d).
  m.def("noise_weighted_sum(Tensor weights, Tensor sigma, Tensor members, int d, int seed, int purpose, bool antithetic) -> Tensor");
  // sum_p weights_p * sigma * (eps_p^2 - 1) -> (d,): the PGPE stdev reduction ((sigma eps)^2 - sigma^2) / sigma.
  m.def("noise_sigma_weighted_sum(Tensor weights, Tensor sigma, Tensor members, int d, int seed, int purpose, bool antithetic) -> Tensor");
}
