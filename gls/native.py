"""The compiled libraries (csrc/): whether they loaded, and which kernels they registered.

Loading gls._C defines the `gls::` ops; their fake kernels and autograd come from gls/meta/, registered
by gls.ops. `AVAILABLE` is False when the extension was not built; gls then runs on the reference (and
Triton) backends, and gls.ops says so when a native backend is asked for. gls._C_cuda_emu, csrc/cuda's
kernels built for the CUDA emulation (setup.py), defines the same ops as `gls_cuda_emu::` on CPU
tensors: `EMU_AVAILABLE`, `EMU_LOAD_ERROR`.
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

try:
    from gls import _C_cuda_emu  # noqa: F401  (registers the gls_cuda_emu:: ops)

    EMU_AVAILABLE = True
    EMU_LOAD_ERROR = None
except ImportError as exc:  # built with GLS_NO_CUDA_EMU=1, or not built
    EMU_AVAILABLE = False
    EMU_LOAD_ERROR = str(exc)

NAMESPACES = ("gls", "gls_cuda_emu")


def _loaded(namespace: str) -> bool:
    return AVAILABLE if namespace == "gls" else EMU_AVAILABLE


@lru_cache(maxsize=None)
def has_op(op: str, namespace: str = "gls") -> bool:
    """Whether <namespace>::<op> is defined (its schema is in the loaded library). Cached, as is has_kernel:
    a library registers everything when it loads, and every op call asks (a few per cent of a CPU
    training step)."""
    if not _loaded(namespace):
        return False
    try:
        torch._C._dispatch_find_schema_or_throw(f"{namespace}::{op}", "")
    except RuntimeError:
        return False
    return True


@lru_cache(maxsize=None)
def has_kernel(op: str, dispatch_key: str, namespace: str = "gls") -> bool:
    """Whether <namespace>::<op> has a kernel registered for `dispatch_key` ("CPU" or "CUDA")."""
    if not _loaded(namespace):
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{op}", dispatch_key)
    except RuntimeError:  # op not defined at all
        return False
