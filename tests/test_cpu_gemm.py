"""The GEMMs of the CPU kernels (csrc/cpu/blocking.h, Gemm): float32 GEMMs of at least 2^20 multiply-adds
go to oneDNN's matmul where torch runs it (AVX-512 CPUs), smaller ones, float64 and all on other CPUs to BLAS, and torch.backends.mkldnn's switch turns oneDNN
off. Shapes here are large enough for the oneDNN path (the kernel tests' odd shapes mostly stay on BLAS):
both paths give the reference's numbers, forward and gradients, and the thread count changes no bit.
"""
import contextlib
import os
import subprocess
import sys

import pytest
import torch

from bound_op_cases import grads, leaf_args, per_thread_count
from conv_windows import conv_args
from gls import native, ops
from gls.reference import bound_ops as ref

pytestmark = [
    pytest.mark.skipif(not native.has_op("backsub_conv_relu_backward"), reason="gls._C not built"),
    pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"),
]

# 3x3 windows of 32 channels through a 4x4 stride-2 convolution to 16 channels, 240 rows per member, half
# of them zero (padding): blocks of 107 rows (csrc/cpu/conv_windows.h), so a full block's forward GEMM is
# (54*9 x 32) @ (32 x 256), 4M multiply-adds (oneDNN), and the last one's 13 rows go to BLAS; the
# backward accumulates dW over both.
CONV = (2, 2, 2, 1, 240, 32, 16, 3, 3, (4, 4), 9, 9, (2, 2), (1, 1), True, False)
# 1x1 rows (single neurons, the first step of a DeepPoly refinement), which the kernels gather row-major:
# blocks of 512 rows, 2M-4M multiply-adds per forward GEMM.
CONV_1X1 = (1, 1, 1, 2, 600, 32, 16, 1, 1, (4, 4), 9, 9, (2, 2), (1, 1), True, False)
TOL = dict(rtol=1e-5, atol=1e-4)
# torch runs oneDNN's float32 matmul only on a CPU with AVX-512 (or AVX-NE-CONVERT); elsewhere the kernels use
# BLAS alone (blocking.h, onednn_float_matmul_runs), and there is no oneDNN GEMM to observe.
ONEDNN_FLOAT = torch.cpu._is_avx512_supported()
needs_onednn_float = pytest.mark.skipif(not ONEDNN_FLOAT, reason="torch runs no float32 oneDNN matmul on this "
                                        "CPU (no AVX-512): the kernels' GEMMs all go to BLAS")


def _conv_args(case=CONV):
    torch.manual_seed(0)
    lam, *rest = conv_args(case, torch.float32)
    lam[:, :, ::2] = 0
    return (lam, *rest)


def _linear_args():
    """backsub_linear_relu with 512 rows per member (64 samples x 8 specs) through a 128 x 256 layer."""
    torch.manual_seed(0)
    P, B, S, n_out, n_in = 2, 64, 8, 128, 256
    lines = [torch.randn(P, B, n_in) for _ in range(4)]
    return (torch.randn(P, B, S, n_out), torch.randn(P, n_out, n_in) / 16, torch.randn(P, n_out), *lines)


def _ibp_args(n_in=512):
    """ibp_affine of 256 inputs through 128 x n_in layers; n_in = 4096 splits W into blocks of 32 rows, so
    each GEMM writes a column block of the output (a strided view)."""
    torch.manual_seed(0)
    return (torch.randn(1, 256, n_in), torch.rand(1, 256, n_in), torch.randn(2, 128, n_in) / n_in ** 0.5,
            torch.randn(2, 128))


@contextlib.contextmanager
def mkldnn(enabled: bool):
    """torch.backends.mkldnn.enabled set for the block (its flags() also sets TF32 and warns)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _outputs_and_grads(fn, args, n_leaves):
    """fn(*args)'s two outputs and their gradients (bound_op_cases.grads) w.r.t. the first n_leaves args."""
    leaves = leaf_args(args[:n_leaves])
    call = lambda *t: fn(*t, *args[n_leaves:])[:2]  # noqa: E731
    return [o.detach() for o in call(*leaves)] + grads(call, leaves)


CALLS = {
    "backsub_conv_relu": (_conv_args, 7, lambda *a: ops.backsub_conv_relu(*a, backend="cpp"), ref.backsub_conv_relu),
    "backsub_conv_relu_1x1": (lambda: _conv_args(CONV_1X1), 7, lambda *a: ops.backsub_conv_relu(*a, backend="cpp"),
                              ref.backsub_conv_relu),
    "backsub_linear_relu": (_linear_args, 7, lambda *a: ops.backsub_linear_relu(*a, backend="cpp"),
                            ref.backsub_linear_relu),
    "ibp_affine": (_ibp_args, 4, lambda *a: ops.ibp_affine(*a, backend="cpp"), ref.ibp_affine),
    "ibp_affine_column_blocks": (lambda: _ibp_args(4096), 4, lambda *a: ops.ibp_affine(*a, backend="cpp"),
                                 ref.ibp_affine),
}


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "blas"])
@pytest.mark.parametrize("name", list(CALLS))
def test_both_gemm_paths_match_the_reference(name, onednn):
    make, n_leaves, kernel, reference = CALLS[name]
    args = make()
    with mkldnn(onednn):
        got = _outputs_and_grads(kernel, args, n_leaves)
    want = _outputs_and_grads(reference, args, n_leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


def test_results_do_not_depend_on_the_thread_count():
    """oneDNN runs single-threaded inside the kernels' parallel regions, on tasks fixed by the shapes."""
    results = per_thread_count(lambda: [t for make, k, kernel, _ in CALLS.values()
                                        for t in _outputs_and_grads(kernel, make(), k)])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _onednn_log(code: str, verbose: str) -> str:
    """stdout of `code` in a fresh Python with ONEDNN_VERBOSE=verbose (oneDNN reads it once, when loaded)."""
    env = dict(os.environ, ONEDNN_VERBOSE=verbose)
    log = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert log.returncode == 0, log.stderr[-2000:]
    return log.stdout


_PROBE = """
import torch, sys
sys.path.insert(0, {tests!r})
import test_cpu_gemm as t
torch.set_num_threads(1)
with t.mkldnn({enabled}):
    for name, (make, k, kernel, _) in t.CALLS.items():
        print("op", name, flush=True)
        t._outputs_and_grads(kernel, make(), k)
"""


@pytest.mark.parametrize("enabled", [pytest.param(True, marks=needs_onednn_float), False])
def test_onednn_runs_the_large_gemms_unless_switched_off(enabled):
    """oneDNN's verbose log lists matmuls for every op here when enabled, and none when switched off; none
    runs oneDNN's reference implementation (`ref:any`, 100-1000x slower: what it picks for a layout its
    optimised kernels lack, such as a transposed destination)."""
    log = _onednn_log(_PROBE.format(tests=os.path.dirname(__file__), enabled=enabled), "1")
    matmuls, op = {}, None
    for line in log.splitlines():
        if line.startswith("op "):
            op = line[3:]
            matmuls[op] = 0
        elif line.startswith("onednn_verbose") and ",exec,cpu,matmul," in line:
            matmuls[op] += 1
            assert ",matmul,ref" not in line, (op, line)
    assert set(matmuls) == set(CALLS), log[-2000:]
    for op, n in matmuls.items():
        assert (n > 0) == enabled, (op, n)


_SHAPES_PROBE = """
import torch, sys
sys.path.insert(0, {tests!r})
import test_cpu_gemm as t
torch.set_num_threads(1)
make, k, kernel, _ = t.CALLS["backsub_conv_relu"]
for zero in range(40):
    lam, *rest = make()
    lam[:, :, :zero] = 0  # 40 different counts of non-zero rows in the first blocks of each member
    t._outputs_and_grads(kernel, (lam, *rest), k)
"""


@needs_onednn_float
def test_onednn_compiles_few_shapes_when_row_counts_vary():
    """The GEMMs' row counts follow the non-zero rows of each call; the conv kernels compute them rounded
    up to four leading binary digits (blocking.h), so 40 different counts compile a few shapes (11 when
    written; at most 8 per GEMM and power of two), where the exact counts would compile about 20 per GEMM."""
    log = _onednn_log(_SHAPES_PROBE.format(tests=os.path.dirname(__file__)), "all")
    compiled = [line.split(",")[-2] for line in log.splitlines()
                if line.startswith("onednn_verbose") and "create:cache_miss" in line and ",matmul," in line]
    assert compiled, log[-2000:]
    assert len(set(compiled)) <= 3 * 8, sorted(set(compiled))
