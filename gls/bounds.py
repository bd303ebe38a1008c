"""Population-batched IBP, hBox, CROWN-IBP and DeepPoly bounds (docs/design.md §3) on top of gls.ops.

Every member p of a population (params {name: (P, *shape)}) is bounded in the same pass; the inputs
are shared. Definitions, per method:

* intermediate bounds (pre-activations of each ReLU): ``ibp`` and ``crown-ibp`` use interval
  arithmetic (IBP); ``hbox`` and ``deeppoly`` back-substitute from that layer to the input with their
  own relaxation of the earlier ReLUs and intersect with IBP. Only rows of neurons unstable under
  IBP (union over members and samples) are back-substituted; the others keep their IBP bounds. This
  equals the all-rows computation: a neuron stable under IBP is stable under the tighter bounds too,
  with the same exact relaxation, and the IBP used for the intersection is plain IBP from the input
  box, so it never depends on the refined bounds. The first layer is not refined when its affine
  part has at most one Linear/Conv: IBP is then already the exact range of an affine map on a box.
* the final bound: ``crown-ibp``, ``hbox`` and ``deeppoly`` back-substitute the specification C
  (rows of C, and of -C for upper bounds, in one pass) to the input box; ``ibp`` folds C into the
  last affine layer (W' = C W, b' = C b, the usual elision of the last layer) and evaluates it on the
  IBP box of that layer's input (with labels and without autograd the same bound class by class,
  _ibp_margins, without forming C W). No intersection at the output.

Every intermediate bound is pushed outward by a rounding margin (_margin), so float32 cancellation
cannot make an unstable ReLU look stable; the result is the real-valued bound up to rounding.
``sound=True`` (gls.sound) gives bounds that are true for the real-valued network whatever the rounding.
Both run under gls.precision.exact_float32: no TF32, no cuDNN, whatever the caller set (the margin covers
fp32 rounding, not TF32's 1e-3).

Inputs are in pixel space: the region is [max(x - eps, lo), min(x + eps, hi)] for domain = (lo, hi)
(None: no clipping); Normalize is a layer of the network and is back-substituted through.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from gls import ops, patches
from gls.affine import Conv, Dense, relax_step
from gls.budget import Blocks, default_budget, give_back_free_memory
from gls.net import Network, check_input, param_dtype
from gls.precision import exact_float32
from gls.problem import (METHODS, Bounds, count_maps, input_region, margin_spec, member_chunk_size, method_name,
                         other_classes, spec_matrix)
from gls.sound import sound_bounds

def _full(t: torch.Tensor, P: int) -> torch.Tensor:
    return t.expand(P, *t.shape[1:]) if t.shape[0] != P else t


def _interval(seg, mid, rad, backend):
    for op in seg:
        mid, rad = op.ibp(mid, rad, backend)
    return mid, rad


_ULPS = 8  # outward margin of intermediate bounds, in units of eps(dtype) times the bound's magnitude


def _margin(scale: torch.Tensor) -> torch.Tensor:
    """Rounding allowance _ULPS * eps(dtype) * scale pushed outward from every intermediate bound.

    Without it, l = mid - rad of a neuron whose true l is slightly negative can round to exactly 0
    (mid ~ rad large: 1e8 x - 1 over x in [0, 1] gives mid = 5e7 in float32) and the neuron would get
    the identity relaxation, off by far more than the rounding (see tests/test_bounds.py). With the
    margin such a neuron stays unstable and gets a (slightly loose) sound relaxation; in float64 the
    margin is ~2e-15 of the bound's magnitude. gls.sound gives bounds sound under every rounding.
    Callers detach it: an allowance for rounding, not part of the bound, so it carries no gradient
    (its gradient, through sign(mid), made a batch split over ranks train different weights).
    """
    return scale * (_ULPS * torch.finfo(scale.dtype).eps)


def _box_step(mid, rad, out=(None, None, None, None)):
    """(l, u) of the box mid -+ rad widened by _margin, and (mid, rad) of its image under ReLU; into the
    four tensors of `out` where given."""
    l_out, u_out, mid_out, rad_out = out
    d = _margin(mid.abs() + rad).detach()
    l = torch.sub(mid, rad, out=l_out).sub_(d)
    u = torch.add(mid, rad, out=u_out).add_(d)
    lp, up = l.relu(), u.relu()
    return l, u, torch.add(up, lp, out=mid_out).div_(2), torch.sub(up, lp, out=rad_out).div_(2)


BOX_BLOCK = 1 << 18  # elements per block of _box_steps: its few live blocks (1 MB each) stay in cache


def _box_steps(mid, rad, keep=True):
    """_box_step of a layer's box; keep=False: only the ReLU image (mid, rad), for IBP, whose pass needs no
    intermediate bounds (l, u are then None). On a CPU where no gradient is taken, in blocks of
    BOX_BLOCK elements, (l, u) of a block and its margin in three cached scratch blocks and the image
    written over mid and rad, which must be the affine step's own fresh outputs. Its ten elementwise
    passes over a whole population's layer (4M floats for CNN7 at P = 16, B = 4) ran from memory, where a
    loop of single members ran them from cache, and lost the batched pass to that loop; with fresh
    outputs for every block they took 88 ms of cnn3's IBP pass at B = 64, P = 64 (one thread), 58 ms
    in place. Same numbers."""
    if mid.device.type != "cpu" or mid.shape != rad.shape or mid.numel() <= BOX_BLOCK or (
            torch.is_grad_enabled() and (mid.requires_grad or rad.requires_grad)):
        l, u, mid, rad = _box_step(mid, rad)
        return (l, u, mid, rad) if keep else (None, None, mid, rad)
    m, r = mid.contiguous().view(-1), rad.contiguous().view(-1)
    l, u = (torch.empty_like(m), torch.empty_like(m)) if keep else (None, None)
    scratch = [m.new_empty(BOX_BLOCK) for _ in range(3)]
    k = _ULPS * torch.finfo(m.dtype).eps
    for i in range(0, m.numel(), BOX_BLOCK):
        mb, rb = m[i:i + BOX_BLOCK], r[i:i + BOX_BLOCK]
        d, lb, ub = (t[:mb.numel()] for t in scratch)
        torch.abs(mb, out=d).add_(rb).mul_(k)  # _margin(|mid| + rad), as _box_step
        lo, hi = (l[i:i + BOX_BLOCK], u[i:i + BOX_BLOCK]) if keep else (lb, ub)
        torch.clamp_min(torch.sub(mb, rb, out=lo).sub_(d), 0, out=lb)
        torch.clamp_min(torch.add(mb, rb, out=hi).add_(d), 0, out=ub)
        torch.add(ub, lb, out=mb).div_(2)
        torch.sub(ub, lb, out=rb).div_(2)
    shape = mid.shape
    return (None if l is None else l.view(shape), None if u is None else u.view(shape), m.view(shape), r.view(shape))


def ibp_boxes(segs, x_lo, x_hi, P, backend):
    """IBP boxes (l, u), each (P, B, N), of every ReLU's pre-activation (widened by _margin), and the box
    of the last affine layer's input; segs from Network.plan, x_lo/x_hi the flat input box
    (problem.input_region). What every method starts from, and what tests check stability with."""
    boxes, (mid, rad) = _ibp_image(segs, x_lo, x_hi, backend)
    return [(_full(l, P), _full(u, P)) for l, u in boxes], (_full(mid - rad, P), _full(mid + rad, P))


def _ibp_image(segs, x_lo, x_hi, backend, keep=True):
    """ibp_boxes' (l, u) of every ReLU (none with keep=False: IBP's own bound needs none of them), not spread
    to the population, and the last affine layer's input as (mid, rad)."""
    mid, rad = ((x_hi + x_lo) / 2).unsqueeze(0), ((x_hi - x_lo) / 2).unsqueeze(0)
    boxes = []
    for seg in segs[:-1]:
        mid, rad = _interval(seg, mid, rad, backend)
        l, u, mid, rad = _box_steps(mid, rad, keep)
        if keep:
            boxes.append((l, u))
    return boxes, _interval(segs[-1][:-1], mid, rad, backend)


def _through(seg, lam):
    bias = lam.new_zeros(lam.shape[:3])
    for op in reversed(seg):
        lam, b = op.back(lam)
        bias = bias + b
    return lam, bias


def _through_windows(seg, rows):
    """Back through a segment's ops with rows as windows (dense from the first op that needs it)."""
    bias = rows.coef.new_zeros(rows.coef.shape[:3])
    for op in reversed(seg):
        if isinstance(rows, patches.Rows) and not patches.windowed(op, rows.shape):
            rows = patches.dense(rows)
        if isinstance(rows, patches.Rows):
            rows, b = patches.back_conv(rows, op) if isinstance(op, Conv) else patches.back_diag(rows, op)
            rows = patches.crop(rows)
        else:
            rows, b = op.back(rows)
        bias = bias + b
    return rows, bias


def _backsub(lam, segs, relax, upto, x_lo, x_hi, backend, windows=True):
    """Lower bound of lam . z over the input box, z the output of segs[upto] (back-substitution).

    lam: dense coefficients (P, B, S, N), or gls.patches.Rows for rows kept as windows. With
    `windows`, rows go through convolutions as windows (dense rows as windows covering the whole map),
    on the fused gls.ops.backsub_conv_relu; without, as dense maps through conv_transpose2d (the
    oracle of the tests). A segment is empty where the network starts with a ReLU or two ReLUs follow
    each other (Identity and Flatten leave no op); rows pass it unchanged.
    """
    shape = lam.coef.shape[:3] if isinstance(lam, patches.Rows) else lam.shape[:3]
    bias = x_lo.new_zeros(shape)
    for j in range(upto, -1, -1):
        seg = segs[j]
        if windows and not isinstance(lam, patches.Rows) and seg and isinstance(seg[-1], Conv):
            lam = patches.whole(lam, seg[-1].out_shape)
        windowed = isinstance(lam, patches.Rows)
        if j == 0:
            if windowed:
                bound = patches.first_conv_bound(lam, seg, x_lo, x_hi, backend)
                if bound is not None:
                    return bound + bias
            lam, b = _through_windows(seg, lam) if windowed else _through(seg, lam)
        elif windowed and len(seg) == 1 and isinstance(seg[0], Conv):  # fused Conv + ReLU step on windows
            lam, b = patches.conv_relu(lam, seg[0], relax[j - 1], backend)
            lam = patches.crop(lam)
        elif not windowed and len(seg) == 1 and isinstance(seg[0], Dense):  # fused Linear + ReLU step
            lam, b = ops.backsub_linear_relu(lam, seg[0].W, seg[0].b, *relax[j - 1], backend=backend)
        else:
            lam, b = _through_windows(seg, lam) if windowed else _through(seg, lam)
            if isinstance(lam, patches.Rows):
                lam, b2 = patches.relax_step(lam, *relax[j - 1])
            else:
                lam, b2 = relax_step(lam, *relax[j - 1])
            b = b + b2
        bias = bias + b
    if isinstance(lam, patches.Rows):
        return patches.concretize(lam, bias, x_lo, x_hi)
    return ops.concretize(lam, bias, x_lo, x_hi, backend=backend)


def _in_blocks(fn, n: int, chunk: int, checkpointed: bool, blocks: Blocks) -> list:
    """[fn(i, j)] over [0, n) in blocks [i, j) of `chunk`; with `checkpointed` each block runs under
    non-reentrant checkpoint (gls.budget): autograd keeps its result and recomputes its graph in the
    backward, under exact_float32 as the forward ran, and each block, computed or recomputed, starts by
    giving the free heap back once it holds more than gls.budget.Blocks.free. Without autograd every block
    does so too: blocks of changing shapes, one after another, each took fresh pages beside the freed
    ones (CNN7 hBox bounds at B = 32: the resident set rose 3.3 GB over blocks of at most 0.5 GB)."""
    if not checkpointed:
        out = []
        for i in range(0, n, chunk):
            if not blocks.grad:
                give_back_free_memory(above=blocks.free)
            out.append(fn(i, min(n, i + chunk)))
        return out

    @exact_float32()
    def block(i, j):
        give_back_free_memory(above=blocks.free)
        return fn(i, j)

    return [checkpoint(block, i, min(n, i + chunk), use_reentrant=False) for i in range(0, n, chunk)]


def _refine(segs, relax, k, l, u, x_lo, x_hi, in_shape, backend, blocks, *, all_rows, windows, intersect_ibp):
    """Intersect the IBP box of segs[k]'s output with back-substituted bounds (unstable rows only);
    with intersect_ibp=False the back-substituted bounds of every neuron replace the IBP box.

    Every (member, sample) back-substitutes only its own unstable neurons: index lists padded to the
    most unstable neurons of any (member, sample) in the pass, padding rows discarded. Rows that
    start at a convolution's neurons go as windows (gls.patches). Rows are independent, so they go
    in blocks that `blocks` (gls.budget.Blocks) sizes; the numbers depend on neither.
    all_rows: every neuron of every (member, sample) (plain CROWN/DeepPoly, and the tests' oracle);
    windows=False: dense rows through conv_transpose2d, the previous algorithm (the oracle).
    """
    P, B, N = l.shape
    shape = patches.map_shape(segs, k, in_shape) if windows else (N,)
    if all_rows:
        idx = torch.arange(N, device=l.device).expand(P, B, N)
        valid = torch.ones_like(idx, dtype=torch.bool)
    else:
        unstable = (l < 0) & (u > 0)
        count = unstable.sum(-1)
        R = int(count.max()) if count.numel() else 0
        if R == 0:
            return l, u
        # unstable neurons first, in index order; the slots past each (p, b)'s count hold stable ones
        idx = torch.sort(unstable.to(torch.uint8), dim=-1, descending=True, stable=True).indices[..., :R]
        valid = torch.arange(R, device=l.device) < count.unsqueeze(-1)
    R = idx.shape[-1]
    value = valid.to(l.dtype)
    cost = patches.row_cost(segs, k, shape)
    per_block, checkpointed = blocks.rows(2 * R, max(cost.most, x_lo.shape[-1]), cost.total, l.element_size() * P * B)

    def bounds_of(i, j):  # lower bounds of z and of -z for the neurons idx[..., i:j]
        part, v = idx[..., i:j], value[..., i:j]
        rows = torch.cat([part, part], dim=-1), torch.cat([v, -v], dim=-1)
        if len(shape) == 3:
            lam = patches.start(*rows, shape)
        else:
            lam = torch.zeros(P, B, rows[0].shape[-1], N, dtype=l.dtype, device=l.device)
            lam.scatter_(-1, rows[0].unsqueeze(-1), rows[1].unsqueeze(-1))
        return _backsub(lam, segs, relax, k, x_lo, x_hi, backend, windows=windows)

    parts = _in_blocks(bounds_of, R, max(1, per_block // 2), checkpointed, blocks)
    l_ibp, u_ibp = l.gather(-1, idx), u.gather(-1, idx)
    d = _margin(torch.maximum(l_ibp.abs(), u_ibp.abs())).detach()  # rounding allowance, as in ibp_boxes
    l_bs = torch.cat([res[..., :res.shape[-1] // 2] for res in parts], -1) - d
    u_bs = -torch.cat([res[..., res.shape[-1] // 2:] for res in parts], -1) + d
    if intersect_ibp:
        l_bs, u_bs = torch.maximum(l_ibp, l_bs), torch.minimum(u_ibp, u_bs)
    l_new, u_new = torch.where(valid, l_bs, l_ibp), torch.where(valid, u_bs, u_ibp)
    return l.scatter(-1, idx, l_new), u.scatter(-1, idx, u_new)


FINAL_BLOCK = 1 << 20  # coefficients of the widest dense map per block of members in _final on a CPU


def _members_of(t: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Members [i, j) of t (P, ...); a tensor with a leading 1 is shared by every member and stays whole."""
    return t[i:j] if t.dim() and t.shape[0] > 1 else t


def _members(op, i: int, j: int):
    """The op (Dense, Conv, Diag) of members [i, j)."""
    part = copy.copy(op)
    for name, value in vars(op).items():
        if isinstance(value, torch.Tensor):
            setattr(part, name, _members_of(value, i, j))
        elif isinstance(value, tuple) and value and all(isinstance(t, torch.Tensor) for t in value):
            setattr(part, name, tuple(_members_of(t, i, j) for t in value))
    return part


def _final(lam, segs, relax, x_lo, x_hi, backend, blocks, windows):
    """_backsub of the specification's rows lam (P, B, S, K) from the output, in `blocks`. On a CPU where
    no gradient is taken, in blocks of members whose coefficients on the widest layer fit FINAL_BLOCK:
    over a whole pass (29 MB for the MLP's input layer at 16 members, B = 64) every step ran from memory
    and lost CROWN-IBP's batched pass to a loop of single members (same numbers up to the GEMMs'
    summation order). Under autograd every block's graph is kept anyway, and gls.memory plans it whole."""
    P, B, S, _ = lam.shape
    widest = max((op.n_in for seg in segs for op in seg), default=1)
    step = max(1, FINAL_BLOCK // (B * S * widest))
    if lam.device.type != "cpu" or step >= P or blocks.grad:
        return _final_block(lam, segs, relax, x_lo, x_hi, backend, blocks, windows)
    return torch.cat([_final_block(lam[i:i + step], [[_members(op, i, i + step) for op in seg] for seg in segs],
                                   [tuple(_members_of(t, i, i + step) for t in r) for r in relax],
                                   x_lo, x_hi, backend, blocks, windows) for i in range(0, P, step)])


def _final_block(lam, segs, relax, x_lo, x_hi, backend, blocks, windows):
    P, B, S, K = lam.shape
    cost = patches.row_cost(segs, len(segs) - 1, (K,))
    rows, checkpointed = blocks.rows(S, max(cost.most, x_lo.shape[-1]), cost.total, lam.element_size() * P * B)
    parts = _in_blocks(lambda i, j: _backsub(lam[:, :, i:j], segs, relax, len(segs) - 1, x_lo, x_hi, backend,
                                             windows=windows), S, rows, checkpointed, blocks)
    return torch.cat(parts, -1)


def _relaxations(segs, boxes, method, x_lo, x_hi, in_shape, backend, blocks, *, all_rows, intersect_ibp):
    """([(l, u)] pre-activation bounds, [(a_l, c_l, a_u, c_u)] lines) of every ReLU layer: IBP's boxes,
    refined by back-substitution for hbox/deeppoly (not the first layer when one Linear/Conv precedes it)."""
    pre, relax = [], []
    for k, (l, u) in enumerate(boxes):
        if method in ("hbox", "deeppoly") and (k > 0 or count_maps(segs[0]) > 1):
            l, u = _refine(segs, relax, k, l, u, x_lo, x_hi, in_shape, backend, blocks, all_rows=all_rows or not intersect_ibp,
                           windows=not all_rows, intersect_ibp=intersect_ibp)
        pre.append((l, u))
        relax.append(ops.relu_relax(l, u, method, backend=backend))
    return pre, relax


IBP_OUTPUT_BLOCK = 1 << 18  # coefficients of C W per block of members in _ibp_output: the block stays in L2


def _ibp_output(last, lam, l_last, u_last, backend):
    """IBP's bound of C z: C (lam (P, B, S, K)) folded into the last affine layer (W' = C W, b' = C b) and
    evaluated on the box (l_last, u_last) of its input, members riding the batch axis of concretize.
    On a CPU a Dense layer goes in blocks of members whose C W fits IBP_OUTPUT_BLOCK: over a whole
    population (75 MB for cnn3 at P = 16, B = 64) it was written to memory and read back."""
    P, B, S, _ = lam.shape
    N = l_last.shape[-1]
    step = P
    if isinstance(last, Dense) and P > 1 and lam.device.type == "cpu":
        step = max(1, IBP_OUTPUT_BLOCK // (B * S * N))
    out = []
    for i in range(0, P, step):
        op = last if step == P else Dense(*(t if t is None or t.shape[0] == 1 else t[i:i + step] for t in (last.W, last.b)))
        g, bias = op.back(lam[i:i + step])
        p = g.shape[0]
        out.append(ops.concretize(g.reshape(1, p * B, S, N), bias.reshape(1, p * B, S),
                                  l_last[i:i + p].reshape(p * B, N), u_last[i:i + p].reshape(p * B, N),
                                  backend=backend).reshape(p, B, S))
    return out[0] if len(out) == 1 else torch.cat(out)


def _ibp_margins(last, labels, mid, rad, both: bool):
    """IBP's lower bounds of the margins z_y - z_j (margin_spec's rows, y = labels (B,)) through a Dense last
    layer over the box mid -+ rad (P|1, B, N) of its input: (W mid + b)_y - (W mid + b)_j - |W_y - W_j| rad,
    the radius term one GEMM per label class over the samples of that class. C W's rows concretized
    (_ibp_output) give the same bounds with the same multiply-adds, but write B (K-1) rows of N numbers
    per member and read them back (75 MB for cnn3 at B = 64, P = 16). Without autograd only: under it the
    weights' gradient would sum over the classes in another order than over the rows of C W, and a batch
    split over ranks (or into sample chunks) would train other weights beyond float rounding of one step.
    both: also the bounds of -C (the upper bounds), after them."""
    W, b = last.W, last.b
    K = W.shape[-2]
    labels = labels.to(W.device).long()
    logits = torch.matmul(mid, W.transpose(-1, -2))
    if b is not None:
        logits = logits + b.unsqueeze(-2)
    P, B = logits.shape[:2]
    k = other_classes(labels, K)
    centre = logits.gather(-1, labels.view(1, B, 1).expand(P, B, 1)) - logits.gather(-1, k.expand(P, B, K - 1))
    spread = centre.new_empty(P, B, K - 1)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        rest = k[idx[0]]  # the classes but c
        rows = idx if idx.numel() > 1 else idx.repeat(2)  # one row takes another summation order (GEMV):
        # a sample's bound would depend on the rest of its batch, and ranks splitting a batch would differ
        out = torch.matmul(rad[:, rows], (W[:, c:c + 1] - W[:, rest]).abs().transpose(-1, -2))
        spread[:, idx] = out[:, :idx.numel()]
    return torch.cat([centre - spread, -centre - spread], -1) if both else centre - spread


# Methods built on this module, method name -> function with compute_bounds's keywords (member_chunk and rows
# aside); gls.alpha_crown registers "alpha-crown" (it imports this module, so this one cannot import it).
EXTENSIONS: dict = {}


def _under_autograd(params: dict, x) -> bool:
    """Whether a pass builds a graph: grad enabled and a weight or the input requires it."""
    return torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in params.values()))


def _blocks(budget, params: dict, x) -> Blocks:
    """The blocks of a pass within `budget` bytes (None: gls.budget.default_budget of x's device); under
    autograd as _under_autograd says."""
    return Blocks(default_budget(x.device) if budget is None else int(budget), _under_autograd(params, x))


@exact_float32()
def deeppoly_pass(net: Network, params: dict, x, eps, *, domain, backend=None, intersect_ibp=True, budget=None):
    """DeepPoly's intermediate bounds, as compute_bounds computes them, for methods that build on them:
    (segs, x_lo, x_hi, pre, relax) with pre[k] = (l, u) (P, B, N) of ReLU k's pre-activation and relax[k]
    its lines (a_l, c_l, a_u, c_u). x checked, params validated (net.resolve_params). budget: as for
    compute_bounds."""
    P = next(iter(params.values())).shape[0] if params else 1
    x_lo, x_hi = input_region(x, eps, domain)
    segs = net.plan(params, x.shape[1:], x.dtype)
    boxes, _ = ibp_boxes(segs, x_lo, x_hi, P, backend)
    pre, relax = _relaxations(segs, boxes, "deeppoly", x_lo, x_hi, x.shape[1:], backend, _blocks(budget, params, x),
                              all_rows=False, intersect_ibp=intersect_ibp)
    return segs, x_lo, x_hi, pre, relax


@exact_float32()
def compute_bounds(model, x, eps, *, method, labels=None, spec=None, params=None, domain=(0.0, 1.0),
                   bound="lower", backend=None, member_chunk=None, intersect_ibp=True, sound=False,
                   rows="unstable", budget=None) -> Bounds:
    """Bounds of C z(x) over the input region for every member of a population.

    model: an nn.Sequential (see gls.net) or a gls.Network. x (B, ...) shared inputs; eps a float or
    (B,) tensor; domain (lo, hi) or None. method: ibp | hbox | crown-ibp | deeppoly (alias crown), or
    a method of EXTENSIONS: alpha-crown (gls.alpha_crown.alpha_crown_bounds with its defaults; member_chunk
    and rows do not apply).
    labels (B,) -> C = margin_spec (S = K-1); spec (B, S, K) -> C; neither -> C = I (the logits).
    params {name: (P, *shape)} (torch.func.stack_module_state format) or None for the model's own
    (P = 1). bound "lower" or "both". backend is passed to every gls.ops call. Differentiable with
    respect to params. Returns Bounds(lower, upper), each (P, B, S).

    member_chunk: members bounded per batched pass (members are independent, so the numbers do not
    depend on it; the union of unstable rows is taken per pass). None: the whole population on a
    GPU; on a CPU about 1024 / B members per pass, where the benchmarks showed larger passes falling
    out of cache and losing to smaller ones (bench/results).

    intersect_ibp: hbox/deeppoly intersect their back-substituted intermediate bounds with IBP (the
    default: never looser than either, and the intersection is what CTBench's DeepPoly and
    hBox compute). It can make a bound differ from plain CROWN: a tighter (l, u) can flip the adaptive
    lower slope (u > -l) to a worse choice for the final bound. intersect_ibp=False back-substitutes
    every neuron and uses those bounds alone, i.e. plain CROWN (method deeppoly) and plain
    back-substituted hBox, as auto_LiRPA's CROWN and the paradox paper's code compute them.

    sound: False (default) computes in the input's dtype; intermediate bounds carry a small outward
    rounding margin (see _margin) so rounding cannot turn an unstable ReLU into a stable one, but the
    result may differ from the real-valued bound by rounding. True: gls.sound's float64 evaluation
    with a rigorous rounding-error allowance; every returned lower (upper) bound is <= (>=) the true
    bound of the real-valued network, whatever the rounding. No gradients in sound mode.

    rows: "unstable" (default) back-substitutes only the rows of IBP-unstable neurons, convolution rows
    as windows (gls.patches); "all" is the dense all-rows reference algorithm: every neuron's row, dense
    maps through conv_transpose2d. Both give the same bounds (the tests' oracle); "all" is much slower.

    budget: bytes the pass's back-substitutions may hold (None: gls.budget.default_budget, a share of the
    device's free memory). Their rows go in blocks sized to it (gls.budget.Blocks); under autograd a
    back-substitution whose graph does not fit runs block by block under checkpoint, its graph
    recomputed one block at a time in the backward. The bounds and gradients do not depend on it.
    Member chunks under autograd share it (each keeps its graph until the backward).
    """
    if isinstance(method, str) and method in EXTENSIONS:
        return EXTENSIONS[method](model, x, eps, labels=labels, spec=spec, params=params, domain=domain, bound=bound,
                                  backend=backend, intersect_ibp=intersect_ibp, sound=sound)
    net = Network.from_module(model)
    method = method_name(method)
    if bound not in ("lower", "both"):
        raise ValueError(f"bound must be 'lower' or 'both', got {bound!r}")
    if rows not in ("unstable", "all"):
        raise ValueError(f"rows must be 'unstable' or 'all', got {rows!r}")
    all_rows = rows == "all"
    params, P = net.resolve_params(params)
    x = check_input(x, param_dtype(params, x))
    if sound:
        return sound_bounds(net, params, x, eps, method=method, labels=labels, spec=spec, domain=domain,
                            bound=bound, member_chunk=member_chunk, intersect_ibp=intersect_ibp)
    chunk = member_chunk_size(member_chunk, P, x.shape[0], x.device, method, dense=not net.has_conv)
    if chunk < P:
        blocks = _blocks(budget, params, x)
        budget = blocks.budget * chunk // P if blocks.grad else blocks.budget
        parts = [compute_bounds(net, x, eps, method=method, labels=labels, spec=spec, domain=domain, bound=bound,
                                params={n: t[i:i + chunk] for n, t in params.items()}, backend=backend,
                                member_chunk=chunk, intersect_ibp=intersect_ibp, rows=rows, budget=max(1, budget))
                 for i in range(0, P, chunk)]
        return Bounds(torch.cat([b.lower for b in parts]),
                      None if bound == "lower" else torch.cat([b.upper for b in parts]))
    x_lo, x_hi = input_region(x, eps, domain)
    segs = net.plan(params, x.shape[1:], x.dtype)
    B, K = x.shape[0], segs[-1][-1].n_out
    C = spec_matrix(labels, spec, B, K, x)
    S = C.shape[1]
    if bound == "both":
        C = torch.cat([C, -C], dim=1)
    lam = C.unsqueeze(0).expand(P, *C.shape).contiguous()

    if method == "ibp":
        _, (mid, rad) = _ibp_image(segs, x_lo, x_hi, backend, keep=False)
        last = segs[-1][-1]
        if labels is not None and isinstance(last, Dense) and not _under_autograd(params, x):
            lb = _full(_ibp_margins(last, labels, mid, rad, bound == "both"), P)
        else:
            lb = _ibp_output(last, lam, _full(mid - rad, P), _full(mid + rad, P), backend)
    else:
        boxes, _ = ibp_boxes(segs, x_lo, x_hi, P, backend)
        blocks = _blocks(budget, params, x)  # IBP back-substitutes nothing: no budget to read
        _, relax = _relaxations(segs, boxes, method, x_lo, x_hi, x.shape[1:], backend, blocks, all_rows=all_rows,
                                intersect_ibp=intersect_ibp)
        lb = _final(lam, segs, relax, x_lo, x_hi, backend, blocks, windows=not all_rows)
    if bound == "lower":
        return Bounds(lb, None)
    return Bounds(lb[..., :S], -lb[..., S:])
