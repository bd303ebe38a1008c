"""Benchmark-suite set-up: the --bench-size switch, the device fixture, and the run's machine info.

quick: sizes that keep `pytest bench/ --benchmark-only` under 10 minutes on a 2-core CPU;
full: the issue's sizes for a GPU. Default: full when a CUDA device is present, quick otherwise.
Test modules read the size in `pytest_generate_tests` (`bench_size(metafunc.config)`), so the
parameter grid itself depends on it. The run keeps freed memory in the process as gls.train and
gls.certify do (gls.app.heap; GLS_KEEP_FREED_MEMORY=0 leaves malloc as it is), for every implementation
alike: with glibc's default, the page faults of a pass's fresh 5-30 MB tensors decided which of two
implementations won (DeepPoly, MLP, B = 8, P = 64: the batched pass 0.64x its loop by default, 1.16x
kept), and the report records which way it ran.
"""
from __future__ import annotations

import os

import pytest
import torch

from gls.app import heap

from bench.harness import HAS_CUDA, SIZES, bench_size, device_name

_KEPT = heap.keep_freed_memory()


def pytest_addoption(parser):
    parser.addoption(
        "--bench-size", choices=SIZES, default=None,
        help="quick: fits the 10-minute CPU budget; full: the GPU sizes "
             "(default: full when a CUDA device is present, else quick)",
    )
    parser.addoption(
        "--bench-threads", type=int, default=None,
        help="torch CPU threads for the whole run (default: torch's own choice). On a machine busy with "
             "other work, 1 avoids OpenMP threads waiting on a descheduled sibling (100x outliers)",
    )


def pytest_configure(config):
    threads = config.getoption("--bench-threads", default=None)
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gls"] = {
        "device": device_name(),
        "device_type": "cuda" if HAS_CUDA else "cpu",
        "bench_size": bench_size(config),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "freed_memory_kept": _KEPT,
    }


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
