"""What the benchmarks run: gls's own networks on synthetic inputs, perturbed populations of them, the
training objective as a population loss, and a memory estimate that decides which sizes fit on this
machine (the rest are skipped, saying why).

Networks (`build`): gls.app.models' mlp (CTBench fc_3layer, 784-256-64-10) on MNIST, cnn3 and cnn7 (no
BatchNorm) on CIFAR-10, with gls.app.data's input shapes and channel statistics, PyTorch's default
initialisation, inputs uniform in [0, 1] and CTBench's radii (MNIST 0.1, CIFAR 2/255). Throughput
depends on the shapes and on how many ReLUs are unstable, and an untrained network at these radii has
a realistic share of unstable neurons at the start of training.
"""
from __future__ import annotations

import math
from unittest import mock

import torch

import gls
from gls import affine, budget, ops, patches
from gls.app import data, models
from gls.problem import method_name
from gls.objective import population_loss as objective

NETS = {"mlp": "mnist", "cnn3": "cifar10", "cnn7": "cifar10"}  # benchmark network -> its dataset
EPS = {"mnist": 0.1, "cifar10": 2 / 255}
NUM_CLASSES = 10

SIGMA = 0.01  # relative perturbation of the weights in a benchmark population
TEMPORARIES = 4  # the estimate's allowance for temporaries of the size of the largest tensor


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """The model's weights as one flat vector (d,) in gls.ParamLayout's order (what gls.smoothing's
    optimisers and gls.Network's layout take)."""
    net = gls.Network.from_module(model)
    return net.layout.flatten(net.params())[0].detach()


def population(net: gls.Network, theta0: torch.Tensor, P: int, seed: int = 0) -> torch.Tensor:
    """(P, d) weights theta0 * (1 + SIGMA * z), z standard normal: P distinct members near theta0."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(P, theta0.numel(), generator=gen).to(theta0.device)
    return theta0 * (1 + SIGMA * z)


def build(name: str, batch: int, device: torch.device, seed: int = 0):
    """(model in eval mode, inputs (batch, C, H, W) in [0, 1], labels (batch,), eps) for network `name`."""
    if name not in NETS:
        raise ValueError(f"unknown benchmark network {name!r}; expected one of {sorted(NETS)}")
    dataset = NETS[name]
    mean, std = data.STATS[dataset]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = models.build(name, data.SHAPES[dataset], mean, std, NUM_CLASSES).eval().to(device)
    x = torch.rand((batch, *data.SHAPES[dataset]), generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    return model, x, y, EPS[dataset]


def population_loss(net: gls.Network, x, y, eps, method: str, backend=None):
    """theta_pop (P, d) -> loss of every member (P,): the training objective (gls.objective) with the
    robust term alone, all members bounded in one pass."""
    return objective(net, x, y, eps=eps, relaxation=method, robust_weight=1.0, backend=backend)


def _segments(net: gls.Network, in_shape) -> list[list[tuple[int, int, int]]]:
    """Per segment between ReLUs, (n_in, n_out, multiply-adds per sample) of each affine op."""
    out = []
    for seg in net.plan(net.params(), in_shape, torch.float32):
        ops = []
        for op in seg:
            W = getattr(op, "W", None)
            if W is None:  # Diag: elementwise
                macs = op.n_out
            elif W.dim() == 3:  # Dense (1, n_out, n_in)
                macs = op.n_out * op.n_in
            else:  # Conv (1, C_out, C_in, kh, kw): every output neuron reads C_in * kh * kw inputs
                macs = op.n_out * math.prod(W.shape[2:])
            ops.append((op.n_in, op.n_out, macs))
        out.append(ops)
    return out


def _refined(segs, method: str) -> list[int]:
    """Indices of the ReLU layers whose pre-activation bounds `method` back-substitutes (gls.bounds)."""
    if method_name(method) not in ("deeppoly", "hbox"):
        return []
    maps = sum(n_in != n_out or macs != n_out for n_in, n_out, macs in segs[0])
    return list(range(0 if maps > 1 else 1, len(segs) - 1))


def bound_pass_bytes(net: gls.Network, in_shape, method: str, P: int, B: int) -> int:
    """Upper estimate of the memory of one population pass of `method` (float32, every ReLU unstable).

    The largest tensor is a back-substitution coefficient block (P, B, rows, N): rows = the K-1
    margins for the final bound, and for DeepPoly/hBox intermediate bounds 2 x the refined layer's
    width, in blocks of at most gls.budget.BLOCK_BYTES (ALIVE float32 tensors of the block); N is the
    widest layer below. Untrained networks at the benchmark radii have nearly every ReLU unstable, so
    the upper estimate is also the likely one.
    """
    segs = _segments(net, in_shape)
    widths = [[seg[0][0]] + [n_out for _, n_out, _ in seg] for seg in segs]
    widest = max(max(w) for w in widths)
    K = widths[-1][-1]
    biggest = 4 * P * B * widest  # IBP boxes
    if method != "ibp":
        biggest = max(biggest, P * B * (K - 1) * widest)
    chunk = budget.BLOCK_BYTES // (4 * budget.ALIVE)
    for k in _refined(segs, method):
        below = max(max(w) for w in widths[: k + 1])
        block = P * B * 2 * widths[k][-1] * below
        biggest = max(biggest, min(block, max(chunk, P * B * below)))
    return 4 * (TEMPORARIES * biggest + 3 * P * net.layout.numel)


def bound_pass_flops(net: gls.Network, in_shape, method: str, P: int, B: int) -> float:
    """Estimated FLOPs of one population pass (every ReLU unstable: an upper estimate; a row costs the
    multiply-adds of its windows or dense coefficients on the way to the input, gls.patches.row_cost)."""
    segs = _segments(net, in_shape)
    plan = net.plan(net.params(), in_shape, torch.float32)
    cost = [sum(macs for _, _, macs in seg) for seg in segs]
    K = segs[-1][-1][1]
    flops = 2 * 2 * sum(cost)  # IBP: centre and radius
    if method != "ibp":
        flops += 2 * (K - 1) * patches.row_cost(plan, len(plan) - 1, (K,))[1]
    for k in _refined(segs, method):
        shape = patches.map_shape(plan, k, in_shape)
        flops += 2 * 2 * segs[k][-1][1] * patches.row_cost(plan, k, shape)[1]
    return float(P * B * flops)


# Sustained float32 rates assumed when deciding whether a case runs in reasonable time.
ASSUMED_FLOPS = {"cpu": 2e10, "cuda": 1e13}
MAX_SECONDS = 120.0


def fast_enough(flops_per_call: float, calls: int, device: torch.device) -> tuple[bool, str]:
    """(whether `calls` calls of `flops_per_call` take at most MAX_SECONDS at ASSUMED_FLOPS, a message)."""
    seconds = calls * flops_per_call / ASSUMED_FLOPS[device.type]
    return seconds <= MAX_SECONDS, (f"about {flops_per_call:.2g} FLOP per call, ~{seconds:.0f} s for {calls} calls "
                                    f"at an assumed {ASSUMED_FLOPS[device.type]:.0e} FLOP/s")


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


def record_backsub(run, *, replay: bool = False) -> list:
    """Run `run()` once and return its back-substitution GEMMs as (function, args, GEMM shape (batch, m, k,
    n)): the gls.ops.backsub_linear_relu and backsub_conv_relu calls (a conv call's GEMM is its window
    columns, zeros included) and the Dense back-steps into the input. Only the rows actually computed
    appear. Without `replay` function and args are None (nothing of the pass is kept alive)."""
    calls = []
    real_backsub, real_back, real_conv = ops.backsub_linear_relu, affine.Dense.back, ops.backsub_conv_relu

    def keep(fn, args, shape):
        calls.append((fn, args, shape) if replay else (None, None, shape))

    def backsub(lam, W, *rest, **kw):
        keep(lambda *a: real_backsub(*a, **kw), (lam, W, *rest),
             (lam.shape[0], lam.shape[1] * lam.shape[2], W.shape[-2], W.shape[-1]))
        return real_backsub(lam, W, *rest, **kw)

    def back(self, lam):
        keep(lambda lam_: real_back(self, lam_), (lam,),
             (lam.shape[0], lam.shape[1] * lam.shape[2], self.W.shape[-2], self.W.shape[-1]))
        return real_back(self, lam)

    def conv(lam, W, *rest, **kw):
        P, B, R, c_out, h, w = lam.shape
        keep(lambda *a: real_conv(*a, **kw), (lam, W, *rest), (P, B * R * h * w, c_out, W[0].numel() // c_out))
        return real_conv(lam, W, *rest, **kw)

    with mock.patch.object(ops, "backsub_linear_relu", backsub), mock.patch.object(affine.Dense, "back", back), \
            mock.patch.object(ops, "backsub_conv_relu", conv):
        run()
    if not calls:
        raise RuntimeError("no back-substitution call was recorded: has gls.bounds stopped using "
                           "gls.ops.backsub_linear_relu / backsub_conv_relu / gls.affine.Dense.back?")
    return calls


def dense_backsub_flops(net: gls.Network, in_shape, method: str, P: int, B: int, specs: int) -> float:
    """GEMM FLOPs of the same back-substitutions done densely (plain CROWN without gls's sparsity): every
    neuron of every layer `method` refines (two rows: lower and upper) and the `specs` specification rows,
    each as whole maps through every Linear/Conv down to the input. record_backsub's FLOPs over this is
    the fraction of the rows and windows gls actually computes."""
    segs = _segments(net, in_shape)
    macs = [sum(m for n_in, n_out, m in seg if n_in != n_out or m != n_out) for seg in segs]  # Diag ops aside
    flops = 2 * specs * sum(macs)
    for k in _refined(segs, method):
        flops += 2 * 2 * segs[k][-1][1] * sum(macs[:k + 1])
    return float(P * B * flops)


def gemm_flops(shapes) -> int:
    """2 * batch * m * k * n summed over (batch, m, k, n) GEMM shapes."""
    return sum(2 * math.prod(s) for s in shapes)


def skip_reason(net: gls.Network, in_shape, method: str, P: int, B: int, device: torch.device, *, calls: int,
                members_per_call: int | None = None, extra_bytes: int = 0, flops_factor: float = 1.0) -> str | None:
    """Why a benchmark of `calls` passes over P members should not run here (memory or time), else None.

    members_per_call: members bounded per gls call (1 for a per-member loop; default P);
    flops_factor: work per pass relative to the bound pass (about 3 with a backward pass).
    """
    per_call = P if members_per_call is None else members_per_call
    ok, why = fits(bound_pass_bytes(net, in_shape, method, per_call, B) + extra_bytes, device)
    if not ok:
        return f"does not fit: {why}"
    ok, why = fast_enough(flops_factor * bound_pass_flops(net, in_shape, method, P, B), calls, device)
    return None if ok else f"too slow here: {why}"
