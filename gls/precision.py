"""Exact float32 arithmetic inside every bound computation, whatever the caller set for training speed.

On Ampere and newer GPUs PyTorch runs float32 convolutions in TF32 by default (10-bit mantissa, about
1e-3 relative), and `torch.set_float32_matmul_precision("high")` does the same to matmul (and lets
oneDNN use TF32 or bf16 on CPUs that have them). cuDNN may also pick Winograd or FFT convolutions, whose
error exceeds that of fp32 rounding. The outward margins of gls.bounds cover fp32 rounding only, so
inside a bound computation `exact_float32` sets the float32 matmul precision to "highest" (IEEE float32
in cuBLAS and oneDNN) and switches cuDNN off (as gls.sound does), so convolutions run as fp32 GEMMs
and cuDNN's own TF32 switch no longer matters. The caller's settings come back afterwards, also after
an exception, so training outside the bounds keeps its speed. Gradients computed later by autograd
run under the caller's settings: they need not be sound.

The matmul precision is set through torch.set_float32_matmul_precision, which keeps torch's legacy and
per-backend (fp32_precision, torch >= 2.9) switches consistent: torch refuses to run a matmul while they
disagree. Only where the caller already set them apart (the per-backend API alone) are the per-backend
switches set and restored directly.
"""
from __future__ import annotations

import contextlib

import torch

# The per-backend matmul switches (torch >= 2.9): "ieee" is exact float32.
_MATMUL = (("cuda", "matmul"), ("mkldnn", "matmul"))


def _matmul_switches():
    return [getattr(getattr(torch.backends, b), o) for b, o in _MATMUL]


@contextlib.contextmanager
def exact_float32():
    """IEEE float32 matmul in cuBLAS and oneDNN, and no cuDNN, inside; the caller's settings afterwards.
    Also a decorator (`@exact_float32()`), each call with its own saved state, so calls may nest."""
    cudnn = torch.backends.cudnn.enabled
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller set the per-backend switches apart: the legacy value has no meaning
        legacy = None
        saved = [(s, s.fp32_precision) for s in _matmul_switches()]
    if legacy is not None:
        torch.set_float32_matmul_precision("highest")
    else:
        for s, _ in saved:
            s.fp32_precision = "ieee"
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = cudnn
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        else:
            for s, value in saved:
                s.fp32_precision = value


def in_force() -> bool:
    """Whether exact float32 is in force now (what exact_float32 sets)."""
    switches = _matmul_switches()
    exact = all(s.fp32_precision == "ieee" for s in switches) if hasattr(switches[0], "fp32_precision") else \
        torch.get_float32_matmul_precision() == "highest"
    return exact and not torch.backends.cudnn.enabled
