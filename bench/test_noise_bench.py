"""Benchmarks of the counter-based noise (pytest bench/ --benchmark-only): throughput against torch.randn
and the peak memory of the PGPE reduction at CNN7 scale.

Baselines run in the same test, on the same machine and thread count, and the ratio is reported in
the benchmark's extra_info (and printed with -s). Timing rounds are minimal (pedantic, one round for
the large case) so the file stays under about two minutes on a 2-core CPU; the CNN7-sized reduction
(d = 17,000,000, P = 256 antithetic: 2.2e9 normals) dominates that time on a CPU.

Memory is the peak resident set growth during the call (Linux: VmHWM after resetting it through
/proc/self/clear_refs), because torch's CPU allocations are invisible to tracemalloc.
"""

import pytest
import torch

from bench.harness import best_round, best_time
from gls import noise

SEED = 12345


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_rss_growth(fn) -> tuple[int, object]:
    """(peak RSS growth in bytes while fn runs, fn's result)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pytest.skip("needs a writable /proc/self/clear_refs (Linux) to measure the peak RSS")
    before = _rss_bytes("VmRSS")
    result = fn()
    return _rss_bytes("VmHWM") - before, result


def test_normal_throughput_vs_randn(benchmark):
    """(64, 65536) float32 normals: gls (default backend) against torch.randn of the same shape."""
    P, d = 64, 65536
    gls_fn = lambda: noise.population_normal(P, d, seed=SEED)  # noqa: E731
    randn_fn = lambda: torch.randn(P, d)  # noqa: E731
    gls_fn(), randn_fn()  # warm-up
    result = benchmark.pedantic(gls_fn, rounds=5, iterations=1)
    assert result.shape == (P, d)
    gls_s = best_round(benchmark)
    randn_s = best_time(randn_fn, torch.device("cpu"), rounds=5)
    benchmark.extra_info.update(normals=P * d, gls_normals_per_s=P * d / gls_s, randn_normals_per_s=P * d / randn_s,
                                gls_time_over_randn=gls_s / randn_s, threads=torch.get_num_threads())
    print(f"\nnoise throughput: gls {P * d / gls_s / 1e6:.1f} M/s, torch.randn {P * d / randn_s / 1e6:.1f} M/s, "
          f"gls/randn time ratio {gls_s / randn_s:.2f}")


def test_weighted_sum_vs_materialised(benchmark):
    """PGPE centre reduction, d = 2^20, P = 32 antithetic: fused (noise regenerated) against the
    materialised PyTorch form (torch.randn noise of shape (P/2, d), then the weighted sum)."""
    P, d = 32, 1 << 20
    w, sigma = torch.randn(P), torch.full((d,), 0.1)

    def materialised():
        eps = torch.randn(P // 2, d)
        return ((w[: P // 2] - w[P // 2:])[:, None] * eps).sum(0) * sigma

    fused = lambda: noise.noise_weighted_sum(w, sigma, SEED, d, antithetic=True)  # noqa: E731
    fused_peak, _ = _peak_rss_growth(fused)
    mat_peak, _ = _peak_rss_growth(materialised)
    benchmark.pedantic(fused, rounds=3, iterations=1)
    fused_s = best_round(benchmark)
    mat_s = best_time(materialised, torch.device("cpu"), rounds=3)
    benchmark.extra_info.update(fused_time_over_materialised=fused_s / mat_s, fused_peak_bytes=fused_peak, materialised_peak_bytes=mat_peak)
    print(f"\nweighted sum d=2^20 P=32: fused {fused_s:.3f} s (peak +{fused_peak / 2**20:.1f} MiB), "
          f"materialised {mat_s:.3f} s (peak +{mat_peak / 2**20:.1f} MiB), time ratio {fused_s / mat_s:.2f}")


def test_weighted_sum_memory_cnn7(benchmark):
    """d = 17,000,000 (CNN7), P = 256 antithetic, one round: peak memory must stay O(d).

    The materialised noise alone would take P * d * 4 bytes = 17.4 GB; the fused op needs its (d,)
    output and the (d,) sigma, about 2 * 68 MB.
    """
    P, d = 256, 17_000_000
    w, sigma = torch.randn(P), torch.full((d,), 0.01)
    peak = {}

    def run():
        peak["bytes"], out = _peak_rss_growth(lambda: noise.noise_weighted_sum(w, sigma, SEED, d, antithetic=True))
        return out

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    materialised_bytes = P * d * 4
    print(f"\nCNN7 weighted sum: peak RSS growth {peak['bytes']:,} bytes ({peak['bytes'] / (4 * d):.2f} x d floats); "
          f"materialised noise would be {materialised_bytes:,} bytes")
    assert out.shape == (d,)
    assert peak["bytes"] < 4 * (4 * d)  # O(d): a few float vectors of length d, nowhere near P * d
    benchmark.extra_info.update(d=d, P=P, peak_rss_growth_bytes=peak["bytes"], materialised_noise_bytes=materialised_bytes,
                                normals_per_s=(P // 2) * d / best_round(benchmark))
