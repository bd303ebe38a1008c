"""Python metadata of every gls op, one module per op: its input check, fake kernel and autograd.

gls/meta/<op>.py defines `register(namespace)`, which registers them for `<namespace>::<op>`. gls.ops
calls it for `gls` when gls._C loads and for `gls_triton` when it loads gls_kernels/<op>.py, so every
namespace that implements an op gets the same fake kernel and the same backward. A module may name in
NEEDS the ops its backward calls (gls.ops loads those first). Modules starting with `_` are helpers
shared by several ops, not ops.
"""
from __future__ import annotations

import importlib

import torch

from gls import native


def module(op: str):
    """The metadata module of `op` (gls.meta.<op>)."""
    return importlib.import_module(f"gls.meta.{op}")


def needs(op: str) -> tuple[str, ...]:
    """Ops that `op`'s backward calls in the same namespace."""
    return tuple(getattr(module(op), "NEEDS", ()))


def register(op: str, namespace: str) -> None:
    """Register the fake kernel and autograd of `op` for `namespace::op` (once per pair: torch refuses twice)."""
    module(op).register(namespace)


def fused_kernel(helper: str, namespace: str, device: torch.device):
    """The fused backward kernel `helper` serving `namespace` on `device`, or None: gls_cuda_emu has its
    own (the CUDA kernel, emulated); the other namespaces use gls::'s CPU or CUDA kernel."""
    own = "gls_cuda_emu" if namespace == "gls_cuda_emu" else "gls"
    if not native.has_kernel(helper, "CUDA" if device.type == "cuda" else "CPU", own):
        return None
    return getattr(getattr(torch.ops, own), helper)
