"""Triton kernels for gls, one op per module: gls_kernels/<op>.py holds the kernel, its launcher and the op
``gls_triton::<op>`` (a ``torch.library.custom_op``), exported as a function named <op>.

Kernels are the ground floor: nothing here imports gls. An op's fake kernel and autograd live in
gls/meta/<op>.py and are registered by gls.ops when it loads the module (the same ones as for the
compiled ``gls::<op>``); each launcher guards its own inputs (dtype, device, shapes it relies on), as the
C++ kernels do. Kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1. The bound ops
take float32 only (other dtypes raise TypeError): float64 work such as gradcheck runs on the reference.
A kernel shared by two ops lives in the module of one of them and the other imports it
(noise_normal -> noise_perturb, noise_sigma_weighted_sum -> noise_weighted_sum). Helpers that are not
ops: ``common.py`` (bound ops) and ``_noise.py`` (noise ops).
"""
