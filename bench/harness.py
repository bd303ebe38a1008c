"""Helpers the benchmarks share: device naming, timing, labelling for bench.report, peak memory.

Labelling convention (bench/README.md): a benchmark is parametrized over `impl`; `record()` stores
its suite, its case (the other parameters), its impl and role ('candidate' or 'baseline') and the
items it processes per call in `benchmark.extra_info`. bench.report groups by (suite, case) and
divides. Times are the best of a few rounds (`min`): on a machine shared with other work that is the
least disturbed figure.
"""
from __future__ import annotations

import ctypes
import os
import re
import threading
import time
import warnings
from typing import Callable

import pytest
import torch

from gls.app.timing import best_of

HAS_CUDA = torch.cuda.is_available()
SIZES = ("quick", "full")


def auto_lirpa():
    """The peer auto_LiRPA (its import warnings silenced), or pytest.skip saying it is not installed: it is
    no dependency of gls (bench/test_peer_bench.py's docstring says how to install it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import auto_LiRPA
    except ImportError as exc:
        pytest.skip(f"auto_LiRPA is not installed ({exc}); see bench/test_peer_bench.py's docstring")
    return auto_LiRPA


def bench_size(config) -> str:
    """The --bench-size in force: the option, else full with a CUDA device and quick without."""
    return config.getoption("--bench-size") or ("full" if HAS_CUDA else "quick")


def device_name() -> str:
    """The CUDA device name, else the CPU model from /proc/cpuinfo (torch has no CPU model name)."""
    if HAS_CUDA:
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def sanitise(name: str) -> str:
    """A file-name-safe form of a device name: 'Intel(R) Xeon(R) CPU' -> 'Intel_R_Xeon_R_CPU'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_.") or "device"


def synced(fn: Callable, device: torch.device) -> Callable:
    """`fn` followed by a device synchronisation, so a timer sees the kernels' whole run."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def measure(benchmark, fn: Callable, device: torch.device, *, rounds: int, warmup: int = 1):
    """Time `fn` with pytest-benchmark: `warmup` untimed calls, then `rounds` timed calls."""
    return benchmark.pedantic(synced(fn, device), rounds=rounds, iterations=1, warmup_rounds=warmup)


def best_round(benchmark) -> float:
    """The best of the rounds `measure` timed. Under --benchmark-disable pytest-benchmark times none, so
    the test's comparison is skipped (its checks on results and memory before this still ran)."""
    if benchmark.stats is None:
        pytest.skip("benchmarking is disabled (--benchmark-disable): no timed rounds to compare")
    return benchmark.stats.stats.min


def best_time(fn: Callable, device: torch.device, *, rounds: int) -> float:
    """Best wall time of `rounds` calls of `fn` after one warm-up call (for in-test reference timings)."""
    return best_of(synced(fn, device), rounds)


def record(benchmark, request, *, suite: str, role: str, items: float | None = None, unit: str = "",
           **info):
    """Label a benchmark for bench.report.

    suite: the benchmark family; role: 'candidate' or 'baseline'; items: work per call (throughput is
    items / time, in `unit`/s). The case is the test's parameters other than `impl`. Other keyword
    arguments are stored as given (numbers or strings).
    """
    if role not in ("candidate", "baseline"):
        raise ValueError(f"role must be 'candidate' or 'baseline', got {role!r}")
    callspec = getattr(request.node, "callspec", None)
    params = dict(callspec.params) if callspec is not None else {}
    impl = params.pop("impl", request.node.originalname)
    params = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
    benchmark.extra_info.update(
        suite=suite, case=",".join(f"{k}={v}" for k, v in params.items()), impl=str(impl), role=role,
        params=params,
    )
    if items is not None:
        benchmark.extra_info.update(items=float(items), unit=unit)
    benchmark.extra_info.update(info)


# ---- peak memory ------------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_reader() -> tuple[Callable[[], int], str]:
    """A function giving the process's live malloc'd bytes (glibc mallinfo2), else its RSS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        page = os.sysconf("SC_PAGE_SIZE")

        def rss() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        return rss, "peak RSS delta (/proc/self/statm, sampled every 0.2 ms)"

    def live() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return live, "peak live-heap delta (glibc mallinfo2: bytes malloc'd and not freed, sampled every 0.2 ms)"


_host_bytes, HOST_MEMORY_MEASURE = _heap_reader()
CUDA_MEMORY_MEASURE = "torch.cuda.max_memory_allocated delta"


class _HostPeak:
    """Peak of _host_bytes() while the block runs, sampled every `interval` seconds by a thread."""

    def __init__(self, interval: float = 2e-4):
        self.interval = interval

    def __enter__(self):
        self.base = self.peak = _host_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _host_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _host_bytes())


def peak_extra_bytes(fn: Callable, device: torch.device) -> tuple[int, str]:
    """(peak memory above the level before the call, name of the measure) for one call of `fn`.

    CUDA: torch.cuda.max_memory_allocated minus memory_allocated before (tensor memory, exact).
    CPU: tracemalloc does not see tensor storage, and RSS hides memory the heap reuses, so the live
    malloc'd bytes (glibc mallinfo2) are sampled; tensors and all other heap memory count, and a
    peak shorter than the sampling interval may be missed.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, CUDA_MEMORY_MEASURE
    with _HostPeak() as peak:
        fn()
    return peak.peak - peak.base, HOST_MEMORY_MEASURE
