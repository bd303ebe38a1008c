"""What the benchmarks run: perturbed populations of a network, the population robust loss, and a
memory estimate that decides which sizes fit on this machine (the rest are skipped, saying why).
"""
from __future__ import annotations

import math

import torch

import gls

SIGMA = 0.01  # relative perturbation of the weights in a benchmark population
TEMPORARIES = 4  # the estimate's allowance for temporaries of the size of the largest tensor


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """The model's weights as one flat vector (d,), in named_parameters() order (gls.ParamLayout's)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def population(net: gls.Network, theta0: torch.Tensor, P: int, seed: int = 0) -> torch.Tensor:
    """(P, d) weights theta0 * (1 + SIGMA * z), z standard normal: P distinct members near theta0."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(P, theta0.numel(), generator=gen).to(theta0.device)
    return theta0 * (1 + SIGMA * z)


def population_loss(net: gls.Network, x, y, eps, method: str, backend=None):
    """theta_pop (P, d) -> robust loss of every member (P,), all members bounded in one pass."""

    def loss(theta_pop: torch.Tensor) -> torch.Tensor:
        params = net.layout.unflatten(theta_pop)
        lower = gls.compute_bounds(net, x, eps, method=method, labels=y, params=params, backend=backend).lower
        return gls.robust_loss(lower)

    return loss


def _widths(net: gls.Network, in_shape) -> list[list[int]]:
    """Per segment between ReLUs, the widths of every activation it touches (input and outputs)."""
    segs = net.plan(net.params(), in_shape, torch.float32)
    return [[op.n_in for op in seg] + [seg[-1].n_out] for seg in segs]


def bound_pass_bytes(net: gls.Network, in_shape, method: str, P: int, B: int) -> int:
    """Upper estimate of the memory of one population pass of `method` (float32, every ReLU unstable).

    The largest tensor is a back-substitution coefficient block (P, B, rows, N): rows = 2 x the width
    of a refined layer (DeepPoly/hBox intermediate bounds, rows of every unstable neuron, lower and
    upper) or the K-1 margins (final bound), N the widest layer below it. Untrained networks at the
    benchmark radii have nearly every ReLU unstable, so the upper estimate is also the likely one.
    """
    widths = _widths(net, in_shape)
    widest = max(max(w) for w in widths)
    K = widths[-1][-1]
    biggest = 4 * P * B * widest  # IBP boxes
    if method != "ibp":
        biggest = max(biggest, P * B * (K - 1) * widest)
    if method in ("deeppoly", "hbox", "crown"):
        first = 0 if sum(n != m for n, m in zip(widths[0], widths[0][1:])) > 1 else 1
        for k in range(first, len(widths) - 1):
            below = max(max(w) for w in widths[: k + 1])
            biggest = max(biggest, P * B * 2 * widths[k][-1] * below)
    return 4 * (TEMPORARIES * biggest + 3 * P * net.layout.numel)


def available_bytes(device: torch.device) -> int:
    """Memory a benchmark may use: 80 % of the free GPU memory, or 60 % of MemAvailable on the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(0.6 * int(line.split()[1]) * 1024)
    return 8 * 2**30


def fits(need: int, device: torch.device) -> tuple[bool, str]:
    """(whether `need` bytes fit, a message for the skip)."""
    have = available_bytes(device)
    return need <= have, f"needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB usable on {device}"


def gemm_flops(shapes) -> int:
    """2 * batch * m * k * n summed over (batch, m, k, n) GEMM shapes."""
    return sum(2 * math.prod(s) for s in shapes)
