"""The compiled library gls._C (csrc/): whether it loaded, and which kernels it registered.

Loading gls._C defines the `gls::` ops; their fake kernels and autograd come from gls/meta/, registered
by gls.ops. `AVAILABLE` is False when the extension was not built; gls then runs on the reference (and
Triton) backends, and gls.ops says so when a native backend is asked for.
"""
from __future__ import annotations

from functools import lru_cache

import torch

try:
    from gls import _C  # noqa: F401  (loading the library registers the ops)

    AVAILABLE = True
    LOAD_ERROR = None
except ImportError as exc:  # extension not built: reference/Triton only
    AVAILABLE = False
    LOAD_ERROR = str(exc)


@lru_cache(maxsize=None)
def has_op(op: str) -> bool:
    """Whether gls::<op> is defined (its schema is in the loaded gls._C). Cached, as is has_kernel: gls._C
    registers everything when it loads, and every op call asks (a few per cent of a CPU training step)."""
    if not AVAILABLE:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw(f"gls::{op}", "")
    except RuntimeError:
        return False
    return True


@lru_cache(maxsize=None)
def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether gls::<op> has a kernel registered for `dispatch_key` ("CPU" or "CUDA")."""
    if not AVAILABLE:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"gls::{op}", dispatch_key)
    except RuntimeError:  # op not defined at all
        return False
