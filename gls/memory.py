"""Memory planned, not discovered: the peak memory of one training or certification step from the shapes.

A step's peak is estimated from the network's layer widths, the members and samples of one pass,
the relaxation and whether autograd keeps the pass's tensors for a backward pass (RGS and plain
gradients do; PGPE, validation and certification run without autograd, so only the tensors alive at
the same time count). :func:`plan_training` then picks the largest member and sample chunks whose
step fits the budget (``--max-memory``), or raises :class:`MemoryPlanError` with one line saying
what would fit; :func:`cert_batch` does the same for the samples of a certification pass.

The per-method cost model is :func:`bound_elements`, in one place: when a relaxation's
implementation changes (for example a cheaper conv back-substitution) only that function changes.
It is an upper estimate: every ReLU is counted as unstable, which is what untrained networks and
large radii give, and what DeepPoly/hBox's refinement costs at worst.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from gls.affine import Conv, Dense, Diag
from gls.bounds import CHUNK_ELEMENTS  # rows back-substituted at a time without autograd
from gls.problem import CPU_ROWS_PER_PASS, method_name

FLOAT_BYTES = 4  # float32
SAFE_FRACTION = {"cpu": 0.7, "cuda": 0.85}  # default --max-memory: this share of the free memory


class MemoryPlanError(ValueError):
    """A step does not fit the memory budget at any chunk size (or at the chunk sizes asked for)."""


@dataclass(frozen=True)
class NetShape:
    """What the cost model needs of a network: per segment between ReLUs, (kind, n_in, n_out) of each
    affine op (kind "dense", "conv" or "diag": an elementwise scaling), and the number of weights d."""

    segments: tuple[tuple[tuple[str, int, int], ...], ...]
    d: int

    @classmethod
    def of(cls, net, in_shape) -> "NetShape":
        segs = net.plan(net.params(), tuple(in_shape), torch.float32)
        kind = {Dense: "dense", Conv: "conv", Diag: "diag"}
        return cls(tuple(tuple((kind[type(op)], op.n_in, op.n_out) for op in seg) for seg in segs), net.layout.numel)

    @property
    def relu_widths(self) -> list[int]:
        return [seg[-1][2] for seg in self.segments[:-1]]

    @property
    def outputs(self) -> int:
        return sum(n_out for seg in self.segments for _, _, n_out in seg)

    @property
    def classes(self) -> int:
        return self.segments[-1][-1][2]

    def refined_layers(self, method: str) -> list[int]:
        """ReLU layers whose bounds hBox/DeepPoly back-substitute (gls.bounds: not the first when one
        Linear/Conv precedes it, since IBP is exact there)."""
        if method not in ("hbox", "deeppoly"):
            return []
        maps = sum(kind != "diag" for kind, _, _ in self.segments[0])
        return list(range(0 if maps > 1 else 1, len(self.segments) - 1))


# ---- the cost model: float32 numbers per member and sample (and per back-substituted row) --------
# Counted from what gls.bounds / gls.affine allocate and what autograd saves; checked against measured
# peaks by tests/memory_probe.py, and OVERHEAD covers what the counts miss (allocator slack,
# temporaries of the backward pass): with it every case of that grid is estimated at 1.08-2.9 times
# its measured peak (at 1.5, two cases were 5 % under).
OVERHEAD = 1.7


def _op_block(kind: str, n_in: int, n_out: int) -> int:
    """Coefficients one back-substitution step through an affine op keeps per row under autograd: the
    new block; for a conv also the window the fused gls.ops.backsub_conv_relu keeps for its backward;
    for a diag its product."""
    return n_in + (n_in if kind in ("diag", "conv") else 0)


def _fused_relu(seg) -> bool:
    """A segment that is one Linear or Conv: the ReLU before it is relaxed inside the fused step
    (gls.ops.backsub_linear_relu / backsub_conv_relu)."""
    return len(seg) == 1 and seg[0][0] in ("dense", "conv")


def bound_elements(shape: NetShape, method: str, p: int, b: int, rows: int, *, grad: bool) -> int:
    """Float32 numbers held at the peak of one bound pass: p members, b samples, `rows` spec rows.

    With ``grad`` autograd keeps every intermediate for the backward pass, so the terms add up; without
    it only what is alive at once counts (the boxes and relaxation lines of every layer, and the largest
    back-substitution step). Per method:

    * ibp: with autograd, per affine op its centre and radius with their layout copies and gradients
      (6 vectors), per ReLU the box before and after and the next op's input copies (10 vectors);
      without, the boxes of every ReLU and two vectors of the widest layer.
    * crown-ibp adds the four relaxation lines per ReLU and the back-substitution of the spec: per
      affine op a (p, b, rows, n) coefficient block (_op_block), per ReLU the block, its line selection
      and product (3 blocks), except a ReLU relaxed inside a fused step (_fused_relu).
    * hbox / deeppoly add, for every refined ReLU layer of width N, the back-substitution of 2N rows
      (its lower and upper bounds, all neurons counted unstable) through the layers below; without
      autograd these go CHUNK_ELEMENTS coefficients at a time.
    * with autograd, the backward pass holds two gradients of the largest block at once.
    """
    segs, relus = shape.segments, shape.relu_widths
    ibp = 6 * shape.outputs + 10 * sum(relus) if grad else 0
    widest_out = max(n for seg in segs for _, _, n in seg)
    if method == "ibp":
        return p * b * (ibp + 2 * widest_out if grad else 4 * widest_out + 2 * sum(relus))

    def kept(k: int, r: int) -> int:
        """Coefficients of r rows back-substituted from segment k to the input, every block kept."""
        relaxed = sum(n for n, seg in zip(relus[:k], segs[1:k + 1]) if not _fused_relu(seg))
        return r * (sum(_op_block(*op) for seg in segs[:k + 1] for op in seg) + 3 * relaxed)

    def widest(k: int) -> int:
        return max(max(n_in, n_out) for seg in segs[:k + 1] for _, n_in, n_out in seg)

    lines = 4 * sum(relus)
    last = len(segs) - 1
    total, block = kept(last, rows), rows * widest(last)
    for k in shape.refined_layers(method):
        total += kept(k, 2 * relus[k])
        chunk_rows = 2 * relus[k] if grad else min(2 * relus[k], max(1, CHUNK_ELEMENTS // (p * b * widest(k))))
        block = max(block, chunk_rows * widest(k))
    if grad:
        return p * b * (ibp + lines + total + 2 * block)
    return p * b * (2 * sum(relus) + lines + 4 * block)


@dataclass(frozen=True)
class StepPlan:
    """Members and samples per pass of a training step, and the estimated peak of that step (bytes)."""

    member_chunk: int
    sample_chunk: int
    bytes: int


def _members_per_bound_pass(p: int, b: int, grad: bool, device: torch.device, method: str) -> int:
    """gls.bounds splits members on a CPU; without autograd only one split is alive at a time."""
    if grad or device.type != "cpu":
        return p
    return min(p, max(1, CPU_ROWS_PER_PASS[method_name(method)] // max(b, 1)))


def step_bytes(shape: NetShape, *, method: str, relaxation: str, population: int, member_chunk: int,
               sample_chunk: int, robust: bool = True, device: torch.device = torch.device("cpu")) -> int:
    """Estimated peak bytes of one training step with `member_chunk` members x `sample_chunk` samples per
    pass (method pgpe | rgs | grad). Weights: the population (P, d), and with autograd its gradient and
    the chunk's gradient; the centre, its optimiser state and the PGPE sigma/velocity/noise sums (~6 d)."""
    grad = method != "pgpe"
    p, b = member_chunk, sample_chunk
    forward = p * b * shape.outputs * (3 if grad else 1)
    bounds = 0
    if robust:
        pb = _members_per_bound_pass(p, b, grad, device, relaxation)
        bounds = bound_elements(shape, relaxation, pb, b, shape.classes - 1, grad=grad)
    weights = shape.d * (population + (2 * p if grad else p) + 6)
    return int(OVERHEAD * FLOAT_BYTES * (forward + bounds + weights))


def cert_bytes(shape: NetShape, method: str, batch: int, device: torch.device = torch.device("cpu"),
               sound: bool = False) -> int:
    """Estimated peak bytes of certifying `batch` samples of one network (no autograd). Sound mode
    (gls.sound) computes the same tensors in float64: twice the bytes (not checked against measured peaks)."""
    width = 2 * FLOAT_BYTES if sound else FLOAT_BYTES
    return int(OVERHEAD * width * bound_elements(shape, method, 1, batch, shape.classes - 1, grad=False))


def available_bytes(device: torch.device) -> int:
    """Free memory now: the GPU's free memory, or MemAvailable of /proc/meminfo on the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def default_budget(device: torch.device) -> int:
    """The default --max-memory: SAFE_FRACTION of the free memory of `device` (the rest is headroom for
    the allocator, the data set and other processes)."""
    return int(SAFE_FRACTION.get(device.type, 0.7) * available_bytes(device))


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_size(text) -> int:
    """Bytes from "24GB", "512 MiB", "1.5g" or a plain number of bytes (binary units: 1 GB = 2^30)."""
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("kmgtib")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = math.nan
    if unit not in _UNITS or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a memory size such as 24GB or 512MB, got {text!r}")
    return int(value * _UNITS[unit])


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _candidates(n: int, step: int = 1) -> list[int]:
    """n, then about n/2, n/4, ... down to `step` (multiples of `step`), largest first."""
    out, c = [], n
    while c >= step:
        out.append(c - c % step)
        c //= 2
    return sorted(set(out) | {step}, reverse=True)


def plan_training(shape: NetShape, *, method: str, relaxation: str, population: int, batch: int, budget: int,
                  member_chunk: int | None = None, sample_chunk: int | None = None, robust: bool = True,
                  device: torch.device = torch.device("cpu")) -> StepPlan:
    """The chunks whose step fits `budget` bytes with the most members x samples per pass (the fewest
    passes); at equal size the whole mini-batch is kept and members are split (either changes the numbers
    only by float rounding). Chunks given by the caller are kept. PGPE member chunks are whole
    antithetic pairs (even)."""
    pair = 2 if method == "pgpe" else 1
    members = [member_chunk] if member_chunk else _candidates(population, pair)
    samples = [sample_chunk] if sample_chunk else _candidates(batch)

    def cost(m, s):
        return step_bytes(shape, method=method, relaxation=relaxation, population=population, member_chunk=m,
                          sample_chunk=s, robust=robust, device=device)

    options = sorted(((m * s, m, s) for m in members for s in samples), key=lambda t: (-t[0], -t[2]))
    for _, m, s in options:
        need = cost(m, s)
        if need <= budget:
            return StepPlan(m, s, need)
    m, s = min(members), min(samples)
    smallest = cost(m, s)
    what = f"{method} {relaxation}, {population} member(s), batch {batch}"
    members_flag = "--pair-chunk" if method == "pgpe" else "--member-chunk"
    if member_chunk or sample_chunk:  # the chunks asked for do not fit: say which would
        free = plan_training(shape, method=method, relaxation=relaxation, population=population, batch=batch,
                             budget=budget, robust=robust, device=device)
        raise MemoryPlanError(f"one step ({what}) with {m} member(s) x {s} sample(s) per pass needs about "
                              f"{gib(smallest)}, more than --max-memory {gib(budget)}; what fits: "
                              f"{members_flag} {free.member_chunk // pair} --sample-chunk {free.sample_chunk} "
                              f"({gib(free.bytes)})")
    raise MemoryPlanError(f"one step ({what}) needs about {gib(smallest)} even with {m} member(s) x 1 sample per "
                          f"pass, more than --max-memory {gib(budget)}; what fits: --max-memory {gib(smallest)} or "
                          f"more, or {fitting_hint(shape, method, relaxation, population, budget, device)}")


def fitting_hint(shape: NetShape, method: str, relaxation: str, population: int, budget: int,
                 device: torch.device) -> str:
    """A cheaper relaxation whose smallest step fits, for the refusal message (else: a smaller network)."""
    for cheaper in ("crown-ibp", "ibp"):
        if cheaper != relaxation and step_bytes(shape, method=method, relaxation=cheaper, population=population,
                                                member_chunk=2 if method == "pgpe" else 1, sample_chunk=1,
                                                device=device) <= budget:
            return f"--relaxation {cheaper}"
    return "a smaller --net or --width"


def cert_batch(shape: NetShape, method: str, batch: int, budget: int,
               device: torch.device = torch.device("cpu"), sound: bool = False) -> int:
    """The largest number of samples (<= batch) certified in one pass within `budget` bytes."""
    for s in _candidates(batch):
        if cert_bytes(shape, method, s, device, sound) <= budget:
            return s
    need = cert_bytes(shape, method, 1, device, sound)
    raise MemoryPlanError(f"certifying one sample with {method} needs about {gib(need)}, more than --max-memory {gib(budget)}")
