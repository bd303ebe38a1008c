"""The compiled ops of csrc/ (torch.ops.gls.*): loads gls._C and registers their fake kernels and autograd.

`AVAILABLE` is False when the extension was not built; gls then runs on the reference (and Triton)
backends, and gls.ops says so when a native backend is asked for.
"""
from __future__ import annotations

import torch

try:
    from gls import _C  # noqa: F401  (loading the library registers the ops)

    AVAILABLE = True
    LOAD_ERROR = None
except ImportError as exc:  # extension not built: reference/Triton only
    AVAILABLE = False
    LOAD_ERROR = str(exc)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether gls::<op> has a kernel registered for `dispatch_key` ("CPU" or "CUDA")."""
    if not AVAILABLE:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"gls::{op}", dispatch_key)
    except RuntimeError:  # op not defined at all
        return False


if AVAILABLE:
    from gls.native import bound_ops  # noqa: F401,E402  (fake + autograd registrations)
    from gls.native import noise  # noqa: F401,E402  (fake + autograd registrations)
