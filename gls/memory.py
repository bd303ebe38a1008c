"""Memory planned, not discovered: the peak memory of one training or certification step.

A step's peak is estimated from the network's geometry (layer widths, and the windows a back-substituted
row of a convolution keeps: gls.patches), the members and samples of one pass, the relaxation, the
unstable neurons of the batch (:func:`unstable_counts`, one IBP pass: hBox/DeepPoly back-substitute
only those rows) and whether autograd keeps the pass's tensors for a backward pass (RGS and plain
gradients do; PGPE, validation and certification run without autograd, so only the tensors alive at
the same time count), with the back-substitutions blocked within the budget as gls.bounds blocks them
(gls.budget.Blocks: under autograd, graphs that do not fit are recomputed one block at a time in the
backward pass, so the with-backward estimate follows the budget). :func:`plan_training` then picks the largest member and sample chunks whose
step fits the budget (``--max-memory``), or raises :class:`MemoryPlanError` with one line saying
what would fit; :func:`cert_batch` does the same for the samples of a certification pass.

The per-method cost model is :func:`bound_elements`, in one place: when a relaxation's
implementation changes (for example a cheaper conv back-substitution) only that function changes.
Without unstable counts every ReLU is counted unstable: what IBP-initialised networks and large radii
give, and the most a pass can need. bench/memory_plan.py checks the model against measured peaks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gls.affine import Conv, Dense, Diag
from gls.bounds import ibp_boxes
from gls.budget import SAFE_FRACTION, Blocks, available_bytes, default_budget  # noqa: F401 (the planner's API)
from gls.net import Network
from gls.problem import input_region, member_chunk_size, method_name

FLOAT_BYTES = 4  # float32
UNBOUNDED = 1 << 62  # no budget: blocks of gls.budget.BLOCK_BYTES


class MemoryPlanError(ValueError):
    """A step does not fit the memory budget at any chunk size (or at the chunk sizes asked for)."""


@dataclass(frozen=True)
class NetShape:
    """What the cost model needs of a network: per segment between ReLUs, (kind, n_in, n_out, geometry)
    of each affine op (kind "dense", "conv" or "diag": an elementwise scaling; geometry of a conv
    (in_shape, out_shape, kernel, stride, dilation), else None), and the number of weights d."""

    segments: tuple[tuple[tuple, ...], ...]
    d: int
    inputs: int  # features of one input: the width of a ReLU that no affine op precedes

    @classmethod
    def of(cls, net, in_shape) -> "NetShape":
        segs = net.plan(net.params(), tuple(in_shape), torch.float32)
        kind = {Dense: "dense", Conv: "conv", Diag: "diag"}

        def op_shape(op):
            geom = None
            if isinstance(op, Conv):
                geom = (op.in_shape, op.out_shape, tuple(op.W.shape[-2:]), tuple(op.stride), tuple(op.dilation))
            return kind[type(op)], op.n_in, op.n_out, geom
        return cls(tuple(tuple(op_shape(op) for op in seg) for seg in segs), net.layout.numel, math.prod(in_shape))

    @property
    def relu_widths(self) -> list[int]:
        """The width of each ReLU layer; an empty segment (a ReLU first, or ReLUs in a row) keeps the width
        before it."""
        widths, width = [], self.inputs
        for seg in self.segments[:-1]:
            width = seg[-1][2] if seg else width
            widths.append(width)
        return widths

    @property
    def outputs(self) -> int:
        return sum(op[2] for seg in self.segments for op in seg)

    @property
    def classes(self) -> int:
        return self.segments[-1][-1][2]

    @property
    def has_conv(self) -> bool:
        return any(op[0] == "conv" for seg in self.segments for op in seg)

    def refined_layers(self, method: str) -> list[int]:
        """ReLU layers whose bounds hBox/DeepPoly back-substitute (gls.bounds: not the first when one
        Linear/Conv precedes it, since IBP is exact there)."""
        if method not in ("hbox", "deeppoly"):
            return []
        maps = sum(op[0] != "diag" for op in self.segments[0])
        return list(range(0 if maps > 1 else 1, len(self.segments) - 1))

    def row_blocks(self, k: int) -> list[tuple[int, int]]:
        """The tensors gls.bounds._backsub makes for one row from segs[k]'s output to the input, in order,
        as (coefficients per row, how many numbers per coefficient autograd keeps of it), following the
        window geometry of gls.patches: a row starting at a convolution's neuron is a (C, 1, 1) window;
        through a convolution (the fused op, which under autograd also keeps its window g) it grows to
        (h - 1) * stride + dilation * (kh - 1) + 1 and is cut to the map (a new tensor; the uncut one is
        then not kept) once no smaller than it; dense rows enter a convolution as whole-map windows (a
        view); a Linear makes rows dense. A first segment of elementwise maps and one convolution is
        concretised by the convolution's op itself (gls.patches.first_conv_bound)."""
        segs = self.segments
        last = segs[k][-1] if segs[k] else None
        size = (last[3][1][0], 1, 1) if last is not None and last[0] == "conv" else None  # (C, h, w) or dense
        blocks = [(size[0] if size else (last[2] if last else 0), 1)]
        for j in range(k, -1, -1):
            seg = segs[j]
            if size is None and seg and seg[-1][0] == "conv":
                size = seg[-1][3][1]
            first_conv = j == 0 and size is not None and seg and all(op[0] == "diag" for op in seg[:-1])
            for kind, n_in, n_out, geom in reversed(seg):
                if kind == "conv" and size is not None:
                    (c_in, H, W), _, (kh, kw), (sh, sw), (dh, dw) = geom
                    h, w = (size[1] - 1) * sh + dh * (kh - 1) + 1, (size[2] - 1) * sw + dw * (kw - 1) + 1
                    size = (c_in, h, w)
                    if h * w >= H * W and not first_conv:
                        blocks += [(c_in * h * w, 1), (c_in * H * W, 1)]
                        size = (c_in, H, W)
                    else:
                        blocks.append((c_in * h * w, 1 if first_conv else 2))  # a bound: only g is kept
                    if first_conv:
                        return blocks
                elif kind == "diag":
                    blocks.append((math.prod(size) if size else n_in, 2))
                else:
                    size = None
                    blocks.append((n_in, DENSE_KEEP))
        return blocks


def unstable_counts(model, x, eps, *, domain=(0.0, 1.0), params=None) -> tuple[int, ...]:
    """Per ReLU layer, the most IBP-unstable neurons of any (member, sample) of x (B, ...): the rows
    hBox/DeepPoly back-substitute for that layer (gls.bounds._refine pads every (member, sample) of a
    pass to it). One IBP pass without autograd: cheap next to the bound pass it plans."""
    net = Network.from_module(model)
    with torch.no_grad():
        params, P = net.resolve_params(params)
        x_lo, x_hi = input_region(x, eps, domain)
        boxes, _ = ibp_boxes(net.plan(params, x.shape[1:], x.dtype), x_lo, x_hi, P, None)
        return tuple(int(((l < 0) & (u > 0)).sum(-1).max()) if l.numel() else 0 for l, u in boxes)


# ---- the cost model: float32 numbers per member and sample (and per back-substituted row) --------
# Counted from what gls.bounds / gls.patches allocate and what autograd saves (row_blocks); the
# constants were fitted to the peak RSS rise measured by bench/memory_plan.py (see its report).
STEP_ALIVE = 1.6  # without autograd: numbers alive per coefficient of the largest step's input and output
GRAD_KEEP = 1.2  # with autograd: numbers per coefficient autograd keeps (row_blocks' counts)
GRAD_BLOCKS = 1.0  # with autograd: gradients of the largest block the backward holds at once
DENSE_KEEP = 3  # with autograd: numbers per coefficient a dense step keeps and its backward holds
RETAINED = 0.5  # with autograd: share of the blocks freed in a checkpointed back-substitution, up to
# gls.budget.Blocks.free, that the heap keeps (CNN7 DeepPoly, B = 1 and 8, default and 1.5 GiB budgets:
# bench.memory_budget on the AVX2 EPYC; fitted on 4 cases with a quarter of the budget as Blocks.free,
# plan / rise 1.07-1.37 with two blocks)
WEIGHT_COPIES = {False: 2.0, True: 6.0}  # numbers per weight and member a pass holds (layouts of the weights
# for each op, |W| of the interval steps; with autograd their gradients and what the steps save)
SINGLE_COPIES = 1.0  # the same for one network without autograd: it reads its weights where they lie (no
# members to lay out) and makes |W| one layer at a time (the Linear op fuses it)
IBP_GRAD = (4, 6)  # with autograd: numbers per neuron an IBP pass keeps, per affine output and per ReLU
IBP_ALIVE = 12  # IBP without autograd: numbers per neuron of the widest layer alive at once: its step's
# input and output (centre and radius) and the CPU convolution's column buffer (C_in kh kw per output
# pixel: 9 per neuron for CNN7's 3x3 layers of 64 channels)
BOXES = 2  # without autograd, the methods that relax ReLUs: numbers per ReLU neuron kept (its IBP box)


def _weight_copies(p: int, grad: bool) -> float:
    """Numbers per weight that a pass of p members holds beside the population's own weights."""
    return SINGLE_COPIES if p == 1 and not grad else p * WEIGHT_COPIES[grad]


def _rows(shape: NetShape, method: str, rows: int, unstable) -> list[tuple[int, int]]:
    """(start layer, rows per member and sample) of every back-substitution of a pass: the spec's rows
    from the output, and for hBox/DeepPoly twice the unstable neurons of each refined layer."""
    out = [(len(shape.segments) - 1, rows)]
    widths = shape.relu_widths
    counts = widths if unstable is None else unstable
    return out + [(k, 2 * min(counts[k], widths[k])) for k in shape.refined_layers(method) if counts[k] > 0]


def bound_elements(shape: NetShape, method: str, p: int, b: int, rows: int, *, grad: bool, unstable=None,
                   budget: int | None = None) -> int:
    """Float32 numbers held at the peak of one bound pass: p members, b samples, `rows` spec rows, its
    back-substitutions blocked within `budget` bytes as gls.bounds blocks them (gls.budget.Blocks; None:
    no limit but gls.budget.BLOCK_BYTES per block).

    unstable: per ReLU layer the most IBP-unstable neurons of a (member, sample) (unstable_counts of the
    batch); None counts every neuron, the most a pass can need. Per method:

    * ibp: with autograd, IBP_GRAD numbers per affine output and per ReLU neuron (and two vectors of the
      widest layer); without, IBP_ALIVE per neuron of the widest layer: IBP keeps no intermediate box.
    * crown-ibp adds the four relaxation lines per ReLU and the back-substitution of the spec rows,
      hbox / deeppoly that of 2 x unstable rows per refined layer; each row's tensors are row_blocks.
      With autograd a back-substitution whose graph is kept keeps every block (row_blocks says how much
      of each, GRAD_KEEP) and the backward pass adds the gradients of the largest (GRAD_BLOCKS); one
      under checkpoint keeps only its bounds, and the backward holds one block of rows' graph and
      gradients at a time, beside the freed heap the process keeps of its earlier blocks (RETAINED of
      them, up to gls.budget.Blocks.free: the blocks give back only what lies beyond it). Without
      autograd only the largest step's input and output of one block of rows are alive (STEP_ALIVE).
    """
    segs, relus = shape.segments, shape.relu_widths
    ibp = IBP_GRAD[0] * shape.outputs + IBP_GRAD[1] * sum(relus) if grad else 0
    widest_out = max(op[2] for seg in segs for op in seg)
    if method == "ibp":
        return p * b * (ibp + 2 * widest_out if grad else IBP_ALIVE * widest_out)
    n_input = segs[0][0][1] if segs[0] else relus[0]
    blocks = Blocks(UNBOUNDED if budget is None else budget, grad)
    kept = block = retained = 0
    for k, r in _rows(shape, method, rows, unstable):
        row = shape.row_blocks(k)
        sizes = [n for n, _ in row]
        graph = sum(n * keep for n, keep in row)  # numbers autograd keeps of one row
        most = max(max(sizes), relus[k] if k < len(relus) else 0, n_input)  # as gls.patches.row_cost counts them
        per_block, checkpointed = blocks.rows(r, most, sum(sizes), FLOAT_BYTES * p * b)
        if not grad:
            block = max(block, min(r, per_block) * max(x + y for x, y in zip(sizes, sizes[1:] + [0])))
        elif checkpointed:  # the backward recomputes one block's graph and holds its gradients
            block = max(block, per_block * (GRAD_KEEP * graph + GRAD_BLOCKS * max(sizes)))
            if budget is not None:  # freed blocks the process keeps, up to Blocks.free (gls.budget)
                freed = min(blocks.free, (-(-r // per_block) - 1) * blocks.block)
                retained = max(retained, int(RETAINED * freed) // FLOAT_BYTES)
        else:
            kept += r * graph
            block = max(block, GRAD_BLOCKS * r * max(sizes))
    lines = 4 * sum(relus)
    if grad:
        return int(p * b * (ibp + lines + GRAD_KEEP * kept + block) + retained)
    return int(p * b * (BOXES * sum(relus) + lines + STEP_ALIVE * block))


def pass_bytes(shape: NetShape, method: str, p: int, b: int, *, grad: bool, unstable=None, rows=None,
               budget: int | None = None) -> int:
    """Estimated peak bytes of one bound pass (margin lower bounds unless `rows` spec rows are given), and
    with `grad` its backward pass: the bound tensors and, with autograd, the weights' gradient; the
    back-substitutions blocked within `budget` (gls.budget.Blocks; None: no limit)."""
    rows = shape.classes - 1 if rows is None else rows
    weights = shape.d * _weight_copies(p, grad)
    return int(FLOAT_BYTES * (bound_elements(shape, method, p, b, rows, grad=grad, unstable=unstable, budget=budget)
                              + weights))


@dataclass(frozen=True)
class StepPlan:
    """Members and samples per pass of a training step, and the estimated peak of that step (bytes)."""

    member_chunk: int
    sample_chunk: int
    bytes: int


def _members_per_bound_pass(p: int, b: int, grad: bool, device: torch.device, method: str, dense: bool) -> int:
    """gls.bounds splits members on a CPU (problem.member_chunk_size); without autograd only one split is
    alive at a time."""
    if grad:
        return p
    return min(p, member_chunk_size(None, p, b, device, method_name(method), dense=dense))


def step_bytes(shape: NetShape, *, method: str, relaxation: str, population: int, member_chunk: int,
               sample_chunk: int, robust: bool = True, device: torch.device = torch.device("cpu"),
               unstable=None, budget: int | None = None) -> int:
    """Estimated peak bytes of one training step with `member_chunk` members x `sample_chunk` samples per
    pass (method pgpe | rgs | grad). Weights: the population (P, d), what a pass holds per member
    (WEIGHT_COPIES), the centre, its optimiser state and the PGPE sigma/velocity/noise sums (~6 d).
    unstable: unstable_counts of the batch at the step's eps (None: every neuron unstable); budget: the
    bytes the step's bound passes are given (gls.bounds blocks within it; None: no limit)."""
    grad = method != "pgpe"
    p, b = member_chunk, sample_chunk
    forward = p * b * shape.outputs * (3 if grad else 1)
    bounds = 0
    if robust:
        pb = _members_per_bound_pass(p, b, grad, device, relaxation, dense=not shape.has_conv)
        bounds = bound_elements(shape, relaxation, pb, b, shape.classes - 1, grad=grad, unstable=unstable,
                                budget=budget)
    weights = shape.d * (population + _weight_copies(p, grad) + 6)
    return int(FLOAT_BYTES * (forward + bounds + weights))


def cert_bytes(shape: NetShape, method: str, batch: int, device: torch.device = torch.device("cpu"),
               sound: bool = False, unstable=None, budget: int | None = None) -> int:
    """Estimated peak bytes of certifying `batch` samples of one network (no autograd), blocked within
    `budget`. Sound mode (gls.sound) computes the same tensors in float64: twice the bytes (not checked
    against measured peaks)."""
    width = 2 * FLOAT_BYTES if sound else FLOAT_BYTES
    return int(width * (bound_elements(shape, method, 1, batch, shape.classes - 1, grad=False, unstable=unstable,
                                       budget=budget)
                        + shape.d * _weight_copies(1, False)))


_UNITS = {"b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}
SIZE_FORMS = "a number with a unit, such as 400GB, 1.5 GiB, 800M or 4096B (binary: 1 GB = 2^30 bytes)"


def parse_size(text) -> int:
    """Bytes from "24GB", "512 MiB", "1.5g" or "4096B" (binary units: 1 GB = 2^30). A bare number is
    refused: "400" meant 400 GB to whoever typed it and would have been read as 400 bytes."""
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("kmgtib")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = math.nan
    if not unit and math.isfinite(value):
        raise ValueError(f"memory size {text!r} has no unit; expected {SIZE_FORMS}")
    if unit not in _UNITS or not math.isfinite(value) or value <= 0 or int(value * _UNITS[unit]) < 1:
        raise ValueError(f"expected a memory size: {SIZE_FORMS}; got {text!r}")
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
                  device: torch.device = torch.device("cpu"), unstable=None) -> StepPlan:
    """The chunks whose step fits `budget` bytes with the most members x samples per pass (the fewest
    passes); at equal size the whole mini-batch is kept and members are split (either changes the numbers
    only by float rounding). Chunks given by the caller are kept. PGPE member chunks are whole
    antithetic pairs (even). unstable: unstable_counts of the batch (None: every neuron unstable); the
    step's bound passes are blocked within `budget` (gls.budget.Blocks)."""
    pair = 2 if method == "pgpe" else 1
    members = [member_chunk] if member_chunk else _candidates(population, pair)
    samples = [sample_chunk] if sample_chunk else _candidates(batch)

    def cost(m, s):
        return step_bytes(shape, method=method, relaxation=relaxation, population=population, member_chunk=m,
                          sample_chunk=s, robust=robust, device=device, unstable=unstable, budget=budget)

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
                             budget=budget, robust=robust, device=device, unstable=unstable)
        raise MemoryPlanError(f"one step ({what}) with {m} member(s) x {s} sample(s) per pass needs about "
                              f"{gib(smallest)}, more than --max-memory {gib(budget)}; what fits: "
                              f"{members_flag} {free.member_chunk // pair} --sample-chunk {free.sample_chunk} "
                              f"({gib(free.bytes)})")
    raise MemoryPlanError(f"one step ({what}) needs about {gib(smallest)} even with {m} member(s) x 1 sample per "
                          f"pass, more than --max-memory {gib(budget)}; what fits: --max-memory {gib(smallest)} or "
                          f"more, or {fitting_hint(shape, method, relaxation, population, budget, device, unstable)}")


def fitting_hint(shape: NetShape, method: str, relaxation: str, population: int, budget: int,
                 device: torch.device, unstable=None) -> str:
    """A cheaper relaxation whose smallest step fits, for the refusal message (else: a smaller network)."""
    for cheaper in ("crown-ibp", "ibp"):
        if cheaper != relaxation and step_bytes(shape, method=method, relaxation=cheaper, population=population,
                                                member_chunk=2 if method == "pgpe" else 1, sample_chunk=1,
                                                device=device, unstable=unstable, budget=budget) <= budget:
            return f"--relaxation {cheaper}"
    return "a smaller --net or --width"


def cert_batch(shape: NetShape, method: str, batch: int, budget: int,
               device: torch.device = torch.device("cpu"), sound: bool = False, unstable=None) -> int:
    """The largest number of samples (<= batch) certified in one pass within `budget` bytes."""
    for s in _candidates(batch):
        if cert_bytes(shape, method, s, device, sound, unstable, budget) <= budget:
            return s
    need = cert_bytes(shape, method, 1, device, sound, unstable, budget)
    raise MemoryPlanError(f"certifying one sample with {method} needs about {gib(need)}, more than --max-memory {gib(budget)}")
