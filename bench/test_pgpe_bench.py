"""PGPE step: time and peak memory of gls.smoothing.PGPE.step vs a naive step.

`gls` (candidate): gls.smoothing.PGPE.step on a population loss that bounds all P members in one
gls.compute_bounds pass (robust loss of the lower margin bounds). `gls-chunked` (candidate, CNN7
only): the same step with `pair_chunk=1`, one antithetic pair per pass, so the step's memory is O(d)
whatever P (the O(d) configuration for large networks). `naive` (baseline): the noise
materialised as a (P/2, d) tensor and kept for the update, the (P, d) population built from it, one
bound pass per member in a Python loop, then the same centred-rank PGPE gradient and ClipUp step.

Memory: peak memory above the level before the first step (bench.harness.peak_extra_bytes: the
torch.cuda.max_memory_allocated delta on a GPU, the sampled live-heap delta from glibc's mallinfo2 on
a CPU; the report says which). Where a size does not fit, it is skipped; bench.report extrapolates the peak to P = 256
linearly in P from the populations measured, and marks the figure as extrapolated.

Sizes (d = 29,930 for CNN3, 89,610 for the MLP, 17.2 M for CNN7): full: batch 64 (CNN7: 8),
P in {16, 64, 256}; quick (CPU): batch 8 (CNN7: 1), P in {16, 64} (CNN7: {2, 8}: a CNN7 population
of 64 alone is 4.4 GB, and CPU time is the limit).

`test_pgpe_members` (suite pgpe_members): one PGPE step of CNN7 with IBP at P = 64 (batch 4 quick, 8
full), `gls` (candidate, all members in one pass) against `loop` (baseline): the same optimiser, noise
and loss, the loss evaluated one member per gls.compute_bounds call. The naive step is not run there:
its (P/2, d) noise and (P, d) population would add 6.6 GB.
"""
from __future__ import annotations

import pytest
import torch

import gls
from gls.smoothing import PGPE, centered_ranks
from bench import workload
from bench.harness import bench_size, measure, peak_extra_bytes, record

SIGMA, LR = 0.01, 0.01
GRID = {  # (model, method, batch, populations)
    "quick": [("mlp", "crown-ibp", 8, (16, 64)), ("cnn3", "crown-ibp", 8, (16, 64)), ("cnn7", "ibp", 1, (2, 8))],
    "full": [("mlp", "crown-ibp", 64, (16, 64, 256)), ("cnn3", "crown-ibp", 64, (16, 64, 256)),
             ("cnn7", "ibp", 8, (16, 64, 256))],
}
IMPLS = ("gls", "gls-chunked", "naive")
CHUNKED_MODELS = ("cnn7",)  # where the population itself is what does not fit
ROUNDS = {"quick": 2, "full": 5}


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ != "test_pgpe_step":
        return
    cases = [pytest.param(m, meth, B, P, impl, id=f"{m}-{meth}-B{B}-P{P}-{impl}")
             for m, meth, B, pops in GRID[bench_size(metafunc.config)] for P in pops for impl in IMPLS
             if impl != "gls-chunked" or m in CHUNKED_MODELS]
    metafunc.parametrize(("model", "method", "B", "P", "impl"), cases)


class NaivePGPE:
    """The textbook step with everything materialised: noise (P/2, d) kept, a loop over members."""

    def __init__(self, theta: torch.Tensor, population: int, member_loss):
        self.theta, self.population, self.member_loss = theta.clone(), population, member_loss
        self.sigma = torch.full_like(theta, SIGMA)
        self.velocity = torch.zeros_like(theta)

    def step(self):
        n = self.population // 2
        z = torch.randn(n, self.theta.numel(), device=self.theta.device)
        pop = torch.cat([self.theta + self.sigma * z, self.theta - self.sigma * z])
        losses = torch.stack([self.member_loss(pop[p:p + 1])[0] for p in range(self.population)])
        ranks = centered_ranks(-losses)
        f_plus, f_minus = ranks[:n], ranks[n:]
        g_mu = (0.5 * (f_plus - f_minus)) @ (self.sigma * z) / n
        g_sigma = ((0.5 * (f_plus + f_minus) - ranks.mean()) @ ((self.sigma * z) ** 2 - self.sigma ** 2)) / (n * self.sigma)
        self.velocity = 0.9 * self.velocity + LR * g_mu / g_mu.norm().clamp_min(1e-30)
        speed = self.velocity.norm()
        if speed > 2 * LR:
            self.velocity = self.velocity * (2 * LR / speed)
        self.theta = self.theta + self.velocity
        limit = 0.2 * self.sigma
        self.sigma = self.sigma + torch.clamp(0.1 * g_sigma, -limit, limit)


def test_pgpe_step(benchmark, request, device, model, method, B, P, impl):
    module, x, y, eps = workload.build(model, B, device)
    net = gls.Network.from_module(module)
    d = net.layout.numel
    rounds = ROUNDS[bench_size(request.config)]
    # both hold the (P, d) population and transient noise; gls bounds P members per call, naive one
    per_call = {"gls": P, "gls-chunked": 2, "naive": 1}[impl]
    why = workload.skip_reason(net, x.shape[1:], method, P, B, device, calls=rounds + 1,
                               members_per_call=per_call, extra_bytes=4 * 2 * per_call * d)
    if why:
        pytest.skip(why)
    loss = workload.population_loss(net, x, y, eps, method)
    theta0 = workload.flat_params(module)
    if impl.startswith("gls"):
        opt = PGPE(theta0, sigma=SIGMA, lr=LR, population=P, seed=0, pair_chunk=1 if impl == "gls-chunked" else None)
        counter = iter(range(10**9))

        def step():
            return opt.step(loss, next(counter))
    else:
        opt = NaivePGPE(theta0, P, loss)
        step = opt.step

    with torch.no_grad():
        try:
            peak, how = peak_extra_bytes(step, device)  # the first step, also the warm-up
            measure(benchmark, step, device, rounds=rounds, warmup=0)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            pytest.skip(f"out of GPU memory: {exc}")
    record(benchmark, request, suite="pgpe", role="candidate" if impl.startswith("gls") else "baseline", items=P,
           unit="members", d=d, peak_bytes=peak, memory_measure=how,
           note=f"memory: {how}; items = population members evaluated per step")


MEMBERS_CASE = {"quick": ("cnn7", "ibp", 4, 64), "full": ("cnn7", "ibp", 8, 64)}
MEMBERS_ROUNDS = {"quick": 3, "full": 3}  # the best of 3 steps after the warm-up (about 20 s per step on 2 cores)


@pytest.mark.parametrize("impl", ["gls", "loop"])
def test_pgpe_members(benchmark, request, device, impl):
    model, method, B, P = MEMBERS_CASE[bench_size(request.config)]
    module, x, y, eps = workload.build(model, B, device)
    net = gls.Network.from_module(module)
    rounds = MEMBERS_ROUNDS[bench_size(request.config)]
    # both hold the (P, d) population and its noise; an IBP pass holds activations, not copies of the
    # weights, so the one-member pass estimate plus the population is what both need
    why = workload.skip_reason(net, x.shape[1:], method, P, B, device, calls=rounds + 1,
                               members_per_call=1, extra_bytes=4 * 2 * P * net.layout.numel)
    if why:
        pytest.skip(why)
    batched = workload.population_loss(net, x, y, eps, method)
    if impl == "gls":
        loss = batched
    else:  # the same loss, one member per call
        def loss(theta_pop):
            return torch.cat([batched(theta_pop[p:p + 1]) for p in range(theta_pop.shape[0])])
    opt = PGPE(workload.flat_params(module), sigma=SIGMA, lr=LR, population=P, seed=0)
    counter = iter(range(10**9))
    with torch.no_grad():
        measure(benchmark, lambda: opt.step(loss, next(counter)), device, rounds=rounds)
    record(benchmark, request, suite="pgpe_members", role="candidate" if impl == "gls" else "baseline", items=P,
           unit="members", model=model, method=method, B=B, P=P)
