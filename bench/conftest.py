"""Benchmark-suite set-up: the --bench-size switch, the device fixture, and the run's machine info.

quick: sizes that keep `pytest bench/ --benchmark-only` under 10 minutes on a 2-core CPU;
full: the issue's sizes for a GPU. Default: full when a CUDA device is present, quick otherwise.
Test modules read the size in `pytest_generate_tests` (`bench_size(metafunc.config)`), so the
parameter grid itself depends on it.
"""
from __future__ import annotations

import os

import pytest
import torch

from bench.harness import HAS_CUDA, SIZES, bench_size, device_name


def pytest_addoption(parser):
    parser.addoption(
        "--bench-size", choices=SIZES, default=None,
        help="quick: fits the 10-minute CPU budget; full: the GPU sizes "
             "(default: full when a CUDA device is present, else quick)",
    )


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gls"] = {
        "device": device_name(),
        "device_type": "cuda" if HAS_CUDA else "cpu",
        "bench_size": bench_size(config),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
    }


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
