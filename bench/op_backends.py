"""What the per-op benchmarks (bench/test_<op>_bench.py) share: every backend of an op timed against its
reference in the same run.

impl: `reference` (baseline: gls.reference through gls.ops), `cpp` (CPU), `cuda` and `triton` (GPU)
(candidates), plus extra baselines a file names (e.g. `matmul`, the bare GEMMs). A backend that cannot
run here is skipped with gls.ops's reason; Triton is skipped on a CPU, where it would be the
interpreter, whose timings mean nothing. Cases: each file's {"quick": [...], "full": [...]}; full
cases are GPU-sized and skipped on a CPU.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from bench.harness import bench_size
from gls import ops

BACKENDS = ("reference", "cpp", "cuda", "triton")
BASELINES = ("reference", "matmul")

ROUNDS = {"quick": 3, "full": 10}


def parametrize(metafunc, cases: dict, extra_impls: tuple[str, ...] = ()) -> None:
    """Parametrize (case, impl) from `cases` at the run's --bench-size, for every backend and extra impl."""
    if "case" not in metafunc.fixturenames:
        return
    size = bench_size(metafunc.config)
    grid = [(c, False) for c in cases["quick"]] + ([(c, True) for c in cases["full"]] if size == "full" else [])
    params = [pytest.param(case, impl, full, id=f"{'-'.join(map(str, case))}-{impl}")
              for case, full in grid for impl in BACKENDS + extra_impls]
    metafunc.parametrize(("case", "impl", "full_case"), params)


def rounds(request) -> int:
    return ROUNDS[bench_size(request.config)]


def implementation(op: str, impl: str, device: torch.device, full_case: bool) -> Callable:
    """gls.ops.<op> on backend `impl` for tensors on `device`, or pytest.skip with the reason it cannot run."""
    if full_case and device.type != "cuda":
        pytest.skip("GPU-sized case (too large for a CPU run)")
    if impl == "triton" and device.type != "cuda":
        pytest.skip("Triton on a CPU is the interpreter: its timings mean nothing")
    try:
        ops.resolve(op, device, impl)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    fn = getattr(ops, op)
    return lambda *args: fn(*args, backend=impl)


def role(impl: str) -> str:
    return "baseline" if impl in BASELINES else "candidate"
