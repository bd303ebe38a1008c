"""RGS step: N perturbed copies in one population pass (gls.smoothing.RGS) vs N separate passes.

`one-pass` (candidate): gls.smoothing.RGS.step, whose population loss bounds all N copies in one
gls.compute_bounds call and back-propagates once. `separate` (baseline): N forward/backward passes,
one per perturbed copy, the gradients averaged, then the same Adam step. Both use the robust loss of
the lower margin bounds. Sizes: full: batch 64, N in {4, 16, 64}, MLP and CNN3 with CROWN-IBP and
DeepPoly; quick (CPU): N = 16, MLP (CROWN-IBP batch 16, DeepPoly batch 8) and CNN3 (CROWN-IBP,
batch 8).
"""
from __future__ import annotations

import pytest
import torch

import gls
from gls.smoothing import RGS
from bench import workload
from bench.harness import bench_size, measure, record

SIGMA, LR = 0.01, 1e-3
GRID = {  # (model, method, batch, sample counts)
    "quick": [("mlp", "crown-ibp", 16, (16,)), ("mlp", "deeppoly", 8, (16,)), ("cnn3", "crown-ibp", 8, (16,))],
    "full": [(m, meth, 64, (4, 16, 64)) for m in ("mlp", "cnn3") for meth in ("crown-ibp", "deeppoly")],
}
IMPLS = ("one-pass", "separate")
ROUNDS = {"quick": 3, "full": 5}


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    cases = [pytest.param(m, meth, B, N, impl, id=f"{m}-{meth}-B{B}-N{N}-{impl}")
             for m, meth, B, ns in GRID[bench_size(metafunc.config)] for N in ns for impl in IMPLS]
    metafunc.parametrize(("model", "method", "B", "N", "impl"), cases)


class SeparateRGS:
    """The smoothed gradient as N independent forward/backward passes, then an Adam step."""

    def __init__(self, theta: torch.Tensor, samples: int, member_loss):
        self.theta = torch.nn.Parameter(theta.clone())
        self.samples, self.member_loss = samples, member_loss
        self.optimizer = torch.optim.Adam([self.theta], lr=LR)

    def step(self):
        base = self.theta.detach()
        z = torch.randn(self.samples, base.numel(), device=base.device)
        grad = torch.zeros_like(base)
        for j in range(self.samples):
            member = (base + SIGMA * z[j]).requires_grad_(True)
            (g,) = torch.autograd.grad(self.member_loss(member.unsqueeze(0))[0], member)
            grad += g
        self.optimizer.zero_grad(set_to_none=True)
        self.theta.grad = grad / self.samples
        self.optimizer.step()


def test_rgs_step(benchmark, request, device, model, method, B, N, impl):
    module, x, y, eps = workload.build(model, B, device)
    net = gls.Network.from_module(module)
    rounds = ROUNDS[bench_size(request.config)]
    # autograd keeps the forward's tensors and the backward costs about twice the forward
    members = N if impl == "one-pass" else 1
    why = workload.skip_reason(net, x.shape[1:], method, N, B, device, calls=rounds + 1, members_per_call=members,
                               extra_bytes=workload.bound_pass_bytes(net, x.shape[1:], method, members, B),
                               flops_factor=3.0)
    if why:
        pytest.skip(why)
    loss = workload.population_loss(net, x, y, eps, method)
    theta0 = workload.flat_params(module)
    if impl == "one-pass":
        opt = RGS(theta0, sigma=SIGMA, samples=N, seed=0,
                  optimizer=lambda params: torch.optim.Adam(params, lr=LR))
        counter = iter(range(10**9))

        def step():
            return opt.step(loss, next(counter))
    else:
        step = SeparateRGS(theta0, N, loss).step
    try:
        measure(benchmark, step, device, rounds=rounds)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"out of GPU memory: {exc}")
    record(benchmark, request, suite="rgs", role="candidate" if impl == "one-pass" else "baseline", items=N,
           unit="copies", note="items = perturbed copies whose gradients one step averages")
