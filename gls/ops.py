"""The one place that picks a backend for each op, and the table of ops.

Backends: ``reference`` (plain PyTorch, gls/reference/), ``cpp`` (csrc/cpu via torch.ops.gls),
``cuda`` (csrc/cuda via torch.ops.gls), ``triton`` (gls_kernels/, one module per op), and
``cuda-emu``: csrc/cuda's kernels run on CPU tensors through the CUDA emulation (csrc/emu, via
torch.ops.gls_cuda_emu), for testing them without a GPU; every op with a ``cuda`` kernel has it.

Choice, first match wins:
1. the ``backend=`` keyword of the call (strict: an error if that backend cannot run the op here);
2. the ``GLS_BACKEND`` environment variable (for every op that backend implements; other ops use
   the default below);
3. the default: CPU tensors -> ``cpp``; CUDA tensors -> ``cuda``, else ``triton``; else ``reference``
   (``cuda-emu`` is never a default: it is slow, and only there to run the CUDA code).
   (CUDA is preferred over Triton on GPUs because the CUDA kernels fuse the perturbation and the
   epilogue; override per call or with GLS_BACKEND=triton.)

An op is found by its name in every tree (README "Adding an op"; tests/test_layout.py checks it):
reference ``def <op>`` in the module named in OPS, schema in csrc/ops.cpp, kernels csrc/cpu/<op>.cpp,
csrc/cuda/<op>.cu and gls_kernels/<op>.py (the ``gls_triton::<op>`` custom op), metadata (input
check, fake kernel, autograd) in gls/meta/<op>.py, tests/test_<op>.py and bench/test_<op>_bench.py.
To add one: write those files, add its entry to OPS and a wrapper function below. This module
registers the metadata: for ``gls::<op>`` and ``gls_cuda_emu::<op>`` at import when the libraries define
them, for ``gls_triton::<op>`` when it first loads the Triton module, so every backend shares one fake
kernel and one backward.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import Callable

import torch

from gls import meta, native

BACKENDS = ("reference", "cpp", "cuda", "triton", "cuda-emu")

# The backend table: op name -> (reference module, backends with a kernel besides the reference).
OPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "relu_relax": ("gls.reference.bound_ops", ("cpp", "cuda", "triton")),
    "backsub_linear_relu": ("gls.reference.bound_ops", ("cpp", "cuda", "triton")),
    "backsub_conv_relu": ("gls.reference.bound_ops", ("cpp", "cuda", "triton")),
    "concretize": ("gls.reference.bound_ops", ("cpp", "cuda", "triton")),
    "ibp_affine": ("gls.reference.bound_ops", ("cpp", "cuda", "triton")),
    "philox4x32_10": ("gls.reference.noise", ("cpp", "cuda", "triton")),
    "noise_normal": ("gls.reference.noise", ("cpp", "cuda", "triton")),
    "noise_perturb": ("gls.reference.noise", ("cpp", "cuda", "triton")),
    "noise_weighted_sum": ("gls.reference.noise", ("cpp", "cuda", "triton")),
    "noise_sigma_weighted_sum": ("gls.reference.noise", ("cpp", "cuda", "triton")),
}


@lru_cache(maxsize=None)
def _triton_impl(op: str) -> Callable | None:
    """gls_kernels.<op>.<op> with its metadata registered (and that of the ops its backward calls), or None."""
    try:
        module = importlib.import_module(f"gls_kernels.{op}")
    except ImportError:
        return None
    if any(_triton_impl(dep) is None for dep in meta.needs(op)):
        return None
    meta.register(op, "gls_triton")
    return getattr(module, op)


def _register_native() -> None:
    """Fake kernels and autograd of the gls:: and gls_cuda_emu:: ops that the loaded libraries define."""
    for namespace in native.NAMESPACES:
        for op in OPS:
            if native.has_op(op, namespace):
                meta.register(op, namespace)


_register_native()


def _triton_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _candidate(op: str, backend: str, device: torch.device) -> tuple[Callable | None, str]:
    """The implementation of `op` on `backend` for tensors on `device`, or (None, why not)."""
    ref_module, kernels = OPS[op]
    if backend == "reference":
        return getattr(importlib.import_module(ref_module), op), ""
    if backend not in kernels and not (backend == "cuda-emu" and "cuda" in kernels):
        return None, f"gls op {op!r} has no {backend} kernel"
    if backend == "cuda-emu":
        if device.type != "cpu":
            return None, f"backend 'cuda-emu' runs on CPU tensors, got tensors on {device}"
        if not native.has_kernel(op, "CPU", "gls_cuda_emu"):
            why = native.EMU_LOAD_ERROR or "gls._C_cuda_emu has no kernel for it"
            return None, f"backend 'cuda-emu' is not available for {op!r}: {why}"
        return getattr(torch.ops.gls_cuda_emu, op), ""
    if backend in ("cpp", "cuda"):
        want = "cpu" if backend == "cpp" else "cuda"
        if device.type != want:
            return None, f"backend {backend!r} runs on {want.upper()} tensors, got tensors on {device}"
        key = "CPU" if backend == "cpp" else "CUDA"
        if not native.has_kernel(op, key):
            why = native.LOAD_ERROR or f"gls._C was built without {key} kernels"
            return None, f"backend {backend!r} is not available for {op!r}: {why}"
        return getattr(torch.ops.gls, op), ""
    impl = _triton_impl(op)
    if impl is None:
        return None, f"backend 'triton' is not available for {op!r} (is triton installed?)"
    if not _triton_runs_on(device):
        return None, f"backend 'triton' needs CUDA tensors or TRITON_INTERPRET=1, got tensors on {device}"
    return impl, ""


def resolve(op: str, device: torch.device, backend: str | None = None) -> tuple[str, Callable]:
    """(backend name, implementation) that runs `op` for tensors on `device`; see the module docstring."""
    if op not in OPS:
        raise KeyError(f"unknown gls op {op!r}")
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        impl, why = _candidate(op, backend, device)
        if impl is None:
            raise RuntimeError(why)
        return backend, impl
    forced = os.environ.get("GLS_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"GLS_BACKEND={forced!r} is not one of {BACKENDS}")
        impl, _ = _candidate(op, forced, device)
        if impl is not None:
            return forced, impl
    order = ("cuda", "triton") if device.type == "cuda" else ("cpp",)
    for name in order + ("reference",):
        impl, _ = _candidate(op, name, device)
        if impl is not None:
            return name, impl
    raise AssertionError("unreachable: the reference always resolves")


def backend_requested(backend: str | None = None) -> bool:
    """Whether a backend was asked for, by the keyword or GLS_BACKEND: code that could avoid the ops (a
    plain-PyTorch path) then calls them, so the backend asked for runs."""
    return backend is not None or bool(os.environ.get("GLS_BACKEND"))


def _call(op: str, backend: str | None, device: torch.device, *args):
    return resolve(op, device, backend)[1](*args)


# ---- bound propagation ----------------------------------------------------------------------------

def relu_relax(l, u, method: str, *, backend: str | None = None):
    """ReLU relaxation lines (a_l, c_l, a_u, c_u) from pre-activation bounds; see gls.reference.bound_ops."""
    return _call("relu_relax", backend, l.device, l, u, method)


def backsub_linear_relu(lam, W, b, a_l, c_l, a_u, c_u, *, backend: str | None = None):
    """Back-substitution through an affine layer and the ReLU before it -> (lam, bias)."""
    return _call("backsub_linear_relu", backend, lam.device, lam, W, b, a_l, c_l, a_u, c_u)


def backsub_conv_relu(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation, *, backend: str | None = None):
    """Back-substitution of windowed rows through a convolution and the ReLU before it -> (lam, bias).

    When autograd records the call, the op keeps each row's transposed convolution for its backward
    (keep_window; gls/meta/backsub_conv_relu.py): one more window per row alive until the backward."""
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (lam, W, b, a_l, c_l, a_u, c_u))
    lam, bias, _ = _call("backsub_conv_relu", backend, lam.device, lam, W, b, a_l, c_l, a_u, c_u, origin, stride,
                         dilation, keep)
    return lam, bias


def concretize(lam, bias, x_lo, x_hi, *, backend: str | None = None):
    """Lower bound of lam.x + bias over the input box -> (P,B,S)."""
    return _call("concretize", backend, lam.device, lam, bias, x_lo, x_hi)


def ibp_affine(mid, rad, W, b, *, backend: str | None = None):
    """Interval step through an affine layer in centre/radius form -> (mid, rad)."""
    return _call("ibp_affine", backend, mid.device, mid, rad, W, b)


# ---- noise (counter-based Gaussian noise; public API in gls.noise) ---------------------------------

def philox4x32_10(counter, key, *, backend: str | None = None):
    """Philox4x32-10 block function on int64-held u32 words: counter (..., 4), key (..., 2) -> (..., 4)."""
    return _call("philox4x32_10", backend, counter.device, counter, key)


def noise_normal(members, d: int, seed: int, purpose: int, antithetic: bool, *, backend: str | None = None):
    """(R or 2R, d) float32 normals of the members' streams; seed as signed int64 (see gls.noise)."""
    return _call("noise_normal", backend, members.device, members, d, seed, purpose, antithetic)


def noise_perturb(theta, sigma, members, seed: int, purpose: int, antithetic: bool, *, backend: str | None = None):
    """(P, d) perturbed parameters theta + sigma * eps_p, regenerating the noise."""
    return _call("noise_perturb", backend, theta.device, theta, sigma, members, seed, purpose, antithetic)


def noise_weighted_sum(weights, sigma, members, d: int, seed: int, purpose: int, antithetic: bool, *, backend: str | None = None):
    """(d,) sum_p weights_p * sigma * eps_p, regenerating the noise."""
    return _call("noise_weighted_sum", backend, weights.device, weights, sigma, members, d, seed, purpose, antithetic)


def noise_sigma_weighted_sum(weights, sigma, members, d: int, seed: int, purpose: int, antithetic: bool, *, backend: str | None = None):
    """(d,) sum_p weights_p * sigma * (eps_p^2 - 1), regenerating the noise."""
    return _call("noise_sigma_weighted_sum", backend, weights.device, weights, sigma, members, d, seed, purpose, antithetic)
