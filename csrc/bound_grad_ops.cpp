// Schemas of the fused backward kernels of the bound ops. They sit beside csrc/ops.cpp (same
// namespace, a TORCH_LIBRARY_FRAGMENT) because that file's schemas are fixed by the forward ops' owner;
// they may move into it.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(gls, m) {
  // Backward epilogue of backsub_linear_relu: with g = lam W recomputed (never stored by the forward),
  // dg = grad_lam*a_l + grad_bias*c_l where g > 0, grad_lam*a_u + grad_bias*c_u where g < 0, 0 where g == 0,
  // and the relaxation gradients summed over specs: d_a_l = sum_s grad_lam*g^+, d_c_l = sum_s grad_bias*g^+,
  // d_a_u = sum_s grad_lam*g^-, d_c_u = sum_s grad_bias*g^-, each (P,B,N_in) -> (dg, d_a_l, d_c_l, d_a_u, d_c_u).
  m.def("backsub_linear_relu_backward(Tensor lam, Tensor W, Tensor grad_lam, Tensor grad_bias, Tensor a_l, Tensor c_l, Tensor a_u, Tensor c_u) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
