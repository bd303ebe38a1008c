"""Triton kernels for gls, one op per module (gls_kernels/<op>.py exports a function named <op>).

Each op is a ``torch.library.custom_op`` in the ``gls_triton`` namespace; gls.ops picks it when the
``triton`` backend is chosen. Kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
The bound ops take float32 only (other dtypes raise TypeError): float64 work such as gradcheck runs on
the reference. Shared JIT helpers live in private modules (``_philox.py``, ``common.py``).
"""
