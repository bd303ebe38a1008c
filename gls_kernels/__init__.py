"""Triton kernels of gls, one op per module (gls_kernels/<op>.py exports a function named <op>), each a torch.library custom op."""
