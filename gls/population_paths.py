"""How P members' weights meet their inputs: the ways to run a population's affine layer, and the choice.

An affine layer of a population maps x (Gx, B, n_in) with weights w (Gw, ...) (Gx, Gw in {1, Q}: 1 =
shared by every member, as the input of the first layer is) to (Q, B, n_out). The ways ("paths"):

* ``stacked`` (input shared by groups of members, Gx < Gw): one convolution of the shared input with
  the members' filters stacked on the output-channel axis (groups = Gx); for a Linear layer one GEMM.
* ``folded`` (weights shared, Gw < Gx): the members folded into the batch, one convolution / GEMM.
* ``grouped``: inputs and weights expanded to Q, one convolution with groups = Q / one batched GEMM.
* ``bmm`` (convolutions): im2col (F.unfold) and one batched GEMM over the members.
* ``loop``: one convolution per member; for a Linear layer one gls.ops.ibp_affine call per member.
* ``op`` (Linear only): gls.ops.ibp_affine, the fused kernel of the backend (reads W once for both). It
  reads the members where they lie (a population's members are views into one (P, d) tensor); the
  other one-call paths copy such a W into one block.

An interval step needs x W^T + b for the centre and |x| |W|^T for the radius. ``paired`` runs both as
one call on a population of 2Q ((mid, W) and (rad, |W|)), ``separate`` as two calls.

Every path gives the same numbers up to the summation order (tests/test_population_paths.py forces
each one). Which runs is chosen per layer and per call by a cost model: for each (kind, path, pairing)
a time t = c_call * calls + c_mac * multiply-adds + c_elem * elements moved (``features``), with
constants fitted by least squares to timings of the layers of gls's benchmark networks on this
machine's kind (``python -m bench.fit_population_paths``; COSTS holds them per device type, with how
they were measured; a path without constants there is not a candidate on that device type). Where a
device type has no fitted constants (the GPU entries are left to a GPU check, which runs the same
script), the choice is one call for all members (``op`` for a Linear layer), centre and radius
separate. ``force`` imposes a path, ``recording`` collects the choices, and the logger
``gls.population_paths`` logs each at DEBUG level.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from gls import ops

log = logging.getLogger("gls.population_paths")

CONV_PATHS = ("stacked", "folded", "grouped", "bmm", "loop")
DENSE_PATHS = ("stacked", "folded", "grouped", "op", "loop")
FUSED = ("op", "loop")  # Linear paths through gls.ops.ibp_affine (mid and rad in one call: "paired")
PAIRINGS = ("separate", "paired")


class Geometry(NamedTuple):
    """A convolution's stride, padding, dilation and per-sample shapes (C, H, W); None for a Linear layer."""
    stride: tuple
    padding: tuple
    dilation: tuple
    in_shape: tuple
    out_shape: tuple


class Choice(NamedTuple):
    """One decision: the layer, the structure (Gx, Gw, B), the path and pairing, and the predicted times."""
    layer: str
    gx: int
    gw: int
    batch: int
    path: str
    pairing: str
    predicted: dict  # (path, pairing) -> seconds, {} where no cost model applies or the choice was forced

    def __str__(self):
        alt = ", ".join(f"{p}/{q} {t * 1e3:.3g} ms" for (p, q), t in sorted(self.predicted.items(), key=lambda kv: kv[1]))
        return (f"{self.layer}: inputs x{self.gx}, weights x{self.gw}, B = {self.batch} -> {self.path}/{self.pairing}"
                + (f" (predicted: {alt})" if alt else ""))


# ---- the paths ------------------------------------------------------------------------------------


def _groups(gx: int, gw: int, path: str) -> tuple[int, int, int]:
    """(G, R, M): G one-call groups; each group's R inputs meet its M weights (one of R, M is 1)."""
    q = max(gx, gw)
    if q % gx or q % gw or (gx != q and gw != q):
        raise ValueError(f"population sizes do not match: inputs x{gx}, weights x{gw}")
    if path == "grouped":
        return q, 1, 1
    g = min(gx, gw)
    return g, gx // g, gw // g


def applicable(path: str, gx: int, gw: int, dense: bool) -> bool:
    """Whether `path` applies to inputs x gx and weights x gw (stacked: input shared by groups of
    members; folded: weights shared by groups of inputs)."""
    if path == "stacked":
        return gx < gw
    if path == "folded":
        return gw < gx
    return path in (DENSE_PATHS if dense else CONV_PATHS)


def _conv_one(x, w, b, geo: Geometry, G, R, M):
    """One grouped convolution: G groups, each R inputs x M weights. x (G*R, B, n_in) -> (G*R*M, B, n_out)."""
    c_in, h, wd = geo.in_shape
    c_out = w.shape[1]
    B = x.shape[1]
    xin = x.reshape(G, R * B, c_in, h, wd).transpose(0, 1).reshape(R * B, G * c_in, h, wd)
    bias = None if b is None else b.reshape(-1)
    y = F.conv2d(xin, w.reshape(-1, *w.shape[2:]), bias, geo.stride, geo.padding, geo.dilation, G)
    n_out = math.prod(geo.out_shape)
    y = y.reshape(R, B, G, M, n_out).permute(2, 3, 0, 1, 4)  # members in (g, m, r) order: one of M, R is 1
    return y.reshape(G * M * R, B, n_out).contiguous()


def _conv_bmm(x, w, b, geo: Geometry, G, R, M):
    """im2col + one batched GEMM (G batches of (M C_out, K) @ (K, R B L))."""
    c_in, h, wd = geo.in_shape
    c_out, k = w.shape[1], tuple(w.shape[-2:])
    B = x.shape[1]
    cols = F.unfold(x.reshape(-1, c_in, h, wd), k, geo.dilation, geo.padding, geo.stride)  # (G R B, K, L)
    K, L = cols.shape[1:]
    cols = cols.reshape(G, R * B, K, L).transpose(1, 2).reshape(G, K, R * B * L)
    y = torch.bmm(w.reshape(G, M * c_out, K), cols)  # (G, M C_out, R B L)
    y = y.reshape(G, M, c_out, R, B, L).permute(0, 1, 3, 4, 2, 5).reshape(G * M * R, B, c_out, L)
    if b is not None:
        y = y + _members(b, G * M * R)[:, None, :, None]
    return y.reshape(G * M * R, B, c_out * L)


def _conv_loop(x, w, b, geo: Geometry, G, R, M):
    """One convolution per member."""
    c_in, h, wd = geo.in_shape
    B, Q = x.shape[1], G * R * M
    xs, ws = _members(x, Q), _members(w, Q)
    bs = None if b is None else _members(b, Q)
    out = [F.conv2d(xs[q].reshape(B, c_in, h, wd), ws[q], None if bs is None else bs[q], geo.stride, geo.padding,
                    geo.dilation) for q in range(Q)]
    return torch.stack(out).reshape(Q, B, -1)


def _dense_one(x, w, b, G, R, M):
    """One (batched) GEMM: G groups of (R B, N) @ (N, M N_out). With one weight per input (R = M = 1) the
    GEMM adds the bias and nothing is reordered: at G = 1 a plain 2-D addmm, 6-23 % faster than a
    batched matmul and a separate add on the MLP's P = 1 layers (2-core EPYC; the least on 784 -> 256)."""
    B, n_out = x.shape[1], w.shape[1]
    if R == M == 1:
        wt = w.transpose(-1, -2)
        if G == 1:
            return (torch.mm(x[0], wt[0]) if b is None else torch.addmm(b[0], x[0], wt[0])).unsqueeze(0)
        return torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(-2), x, wt)
    y = torch.matmul(x.reshape(G, R * B, -1), w.reshape(G, M * n_out, -1).transpose(-1, -2))
    y = y.reshape(G, R, B, M, n_out).permute(0, 3, 1, 2, 4).reshape(G * M * R, B, n_out)
    return y.contiguous() if b is None else y + _members(b, G * M * R).unsqueeze(-2)


def _members(t: torch.Tensor, q: int) -> torch.Tensor:
    """t (1 or g, ...) spread to q members (member j of q takes t[j // (q / g)])."""
    g = t.shape[0]
    return t if g == q else (t.expand(q, *t.shape[1:]) if g == 1 else t.repeat_interleave(q // g, 0))


def run(path: str, x, w, b, geo: Geometry | None):
    """The affine map of every member along `path` (not ``op``): x (Gx, B, n_in), w (Gw, ...), b (Gw, n_out)
    or None -> (max(Gx, Gw), B, n_out). geo None: a Linear layer (w (Gw, N_out, N_in))."""
    gx, gw = x.shape[0], w.shape[0]
    if geo is None and path in FUSED:
        raise ValueError(f"path {path!r} runs the interval step (interval()), not a single map")
    if not applicable(path, gx, gw, geo is None):
        raise ValueError(f"path {path!r} does not apply to inputs x{gx}, weights x{gw} "
                         f"({'Linear' if geo is None else 'Conv'} layer)")
    G, R, M = _groups(gx, gw, path)
    if path == "grouped":
        q = G
        x, w, b = _members(x, q), _members(w, q), None if b is None else _members(b, q)
    if geo is None:
        return _dense_one(x, w, b, G, R, M)
    if b is not None and b.shape[0] != w.shape[0]:
        b = _members(b, w.shape[0])
    return {"stacked": _conv_one, "folded": _conv_one, "grouped": _conv_one, "bmm": _conv_bmm,
            "loop": _conv_loop}[path](x, w, b, geo, G, R, M)


def interval(path: str, pairing: str, mid, rad, w, b, geo: Geometry | None, backend=None):
    """(mid W^T + b, rad |W|^T) of every member along `path`, the two products in one call (paired)
    or two (separate); op and loop of a Linear layer call gls.ops.ibp_affine on `backend`."""
    if geo is None and path in FUSED:
        if path == "op":
            return ops.ibp_affine(mid, rad, w, b, backend=backend)
        q = max(mid.shape[0], rad.shape[0], w.shape[0])
        mids, rads, ws = _members(mid, q), _members(rad, q), _members(w, q)
        bs = None if b is None else _members(b, q)
        outs = [ops.ibp_affine(mids[j:j + 1], rads[j:j + 1], ws[j:j + 1], None if bs is None else bs[j:j + 1],
                               backend=backend) for j in range(q)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    if pairing == "separate":
        return run(path, mid, w, b, geo), run(path, rad, w.abs(), None, geo)
    g = max(mid.shape[0], rad.shape[0])
    x2 = torch.cat([_members(mid, g), _members(rad, g)])
    w2 = torch.cat([w, w.abs()])
    b2 = None if b is None else torch.cat([_members(b, w.shape[0]), torch.zeros_like(_members(b, w.shape[0]))])
    out = run(path, x2, w2, b2, geo)
    return out.chunk(2)


# ---- the cost model -------------------------------------------------------------------------------


def features(path: str, pairing: str, gx: int, gw: int, B: int, w_shape, geo: Geometry | None,
             w_contiguous: bool = True) -> tuple[float, ...]:
    """(calls, multiply-adds, elements moved) of an interval step along (path, pairing); a W that is not
    contiguous is copied by the one-call paths (not by the loops, whose members are contiguous blocks, nor
    by the fused op, which reads each member in place)."""
    q = max(gx, gw)
    if geo is None:
        n_out, n_in = w_shape[-2:]
        k, n_in_px, n_out_px = n_in, n_in, n_out
    else:
        k = math.prod(w_shape[2:])  # C_in kh kw
        n_in_px, n_out_px = math.prod(geo.in_shape), math.prod(geo.out_shape)
    macs = 2 * q * B * n_out_px * k
    w_elems = 2 * gw * math.prod(w_shape[1:])
    x_read = 2 * (q if path == "grouped" and geo is not None else gx) * B * n_in_px  # a GEMM broadcasts x
    moved = x_read + 2 * 2 * q * B * n_out_px + w_elems  # outputs are written, then reordered
    if path == "bmm":
        L = n_out_px // w_shape[1]
        moved += 2 * 2 * gx * B * k * L  # the columns: written by unfold, reordered
    calls = {"loop": q if geo is None else 2 * q, "op": 1}.get(path, 2 if pairing == "separate" else 1)
    if pairing == "paired" and path not in FUSED:
        moved += x_read + w_elems  # the concatenated inputs and weights
    if not w_contiguous and path not in FUSED:
        moved += w_elems  # read and written once more
    return float(calls), float(macs), float(moved)


# Fitted constants (seconds per call, per multiply-add, per element moved) per (kind, path, pairing),
# per device type. cpu: `python -m bench.fit_population_paths` (its docstring gives the layers and sizes)
# on the 2-core Intel Xeon development machine, 2 torch threads, the machine otherwise idle (load average
# 1.8 from the minutes before), timings and fit in bench/results/population_paths_fit_Intel_Xeon.json.
# Over its 42 layers the picks took 0.80 s against 0.76 s for the fastest path of each and 1.03 s for
# one call for all members; the worst picks took 1.3-1.6x the fastest (small P = 1 convolutions, 1-2 ms;
# the MLP's first layer at B = 64, P = 64, stacked filters at 54 ms where the batched GEMM took 35 ms).
# On the 2-core AVX2 AMD EPYC (no AVX-512; bench/results/population_paths_fit_AMD_EPYC_AVX2.json, same
# script, load ~1) these constants' picks took 0.88 s over the same layers, against 0.84 s for the fastest
# path of each and 0.90 s for the picks of that machine's own fit: one entry serves both CPU kinds.
# The Linear layers' stacked path is left out of the CPU entry (a path without constants is not a
# candidate): it was never the fastest in this fit or in three earlier ones (1.2-1.6x the batched GEMM on
# the MLP's first layer, which copies no weights and reorders no outputs), yet its fitted constants,
# from 4 layers, kept picking it there.
# cuda: not fitted yet, left to the GPU check (bench.gpu_check's paths stage; until then the one-call
# default applies).
COSTS: dict[str, dict[tuple[str, str, str], tuple[float, float, float]] | None] = {
    "cpu": {
        ('conv', 'bmm', 'paired'): (0.0, 8.249e-12, 1.472e-09),
        ('conv', 'bmm', 'separate'): (0.0, 7.898e-12, 1.396e-09),
        ('conv', 'folded', 'paired'): (0.0, 8.162e-12, 1.249e-09),
        ('conv', 'folded', 'separate'): (0.0009916, 9.782e-12, 0.0),
        ('conv', 'grouped', 'paired'): (0.0, 6.01e-12, 1.662e-09),
        ('conv', 'grouped', 'separate'): (0.0, 5.895e-12, 1.446e-09),
        ('conv', 'loop', 'paired'): (9.658e-05, 9.304e-12, 9.604e-10),
        ('conv', 'loop', 'separate'): (0.0001072, 9.606e-12, 5.503e-10),
        ('conv', 'stacked', 'paired'): (0.0, 2.726e-11, 5.775e-10),
        ('conv', 'stacked', 'separate'): (0.0, 3.081e-11, 1.259e-10),
        ('linear', 'folded', 'paired'): (0.0, 3.71e-11, 0.0),
        ('linear', 'folded', 'separate'): (1.74e-05, 1.988e-11, 0.0),
        ('linear', 'grouped', 'paired'): (0.0, 3.577e-11, 5.21e-10),
        ('linear', 'grouped', 'separate'): (0.0, 2.042e-11, 3.532e-10),
        ('linear', 'loop', 'paired'): (1.882e-05, 4.017e-11, 2.246e-11),
        ('linear', 'op', 'paired'): (0.0, 3.865e-11, 3.882e-11),
    },
    "cuda": None,
}

_force: contextvars.ContextVar = contextvars.ContextVar("gls_population_paths_force", default=None)
_record: contextvars.ContextVar = contextvars.ContextVar("gls_population_paths_record", default=None)


@contextlib.contextmanager
def force(path: str | None = None, pairing: str | None = None):
    """Run every layer along `path` where it applies (elsewhere the model's choice) and with `pairing`.

    For tests and measurements: `with force("loop", "separate"): gls.compute_bounds(...)`."""
    if path is not None and path not in set(CONV_PATHS) | set(DENSE_PATHS):
        raise ValueError(f"unknown path {path!r}; expected one of {sorted(set(CONV_PATHS) | set(DENSE_PATHS))}")
    if pairing is not None and pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")
    token = _force.set((path, pairing))
    try:
        yield
    finally:
        _force.reset(token)


@contextlib.contextmanager
def recording():
    """Collect the Choice of every interval step taken inside the block: `with recording() as choices:`."""
    choices: list[Choice] = []
    token = _record.set(choices)
    try:
        yield choices
    finally:
        _record.reset(token)


def predict(device_type: str, path: str, pairing: str, gx, gw, B, w_shape, geo, w_contiguous=True) -> float | None:
    """Predicted seconds of an interval step along (path, pairing), or None without fitted constants."""
    table = COSTS.get(device_type)
    key = ("linear" if geo is None else "conv", path, pairing)
    if not table or key not in table:
        return None
    f = features(path, pairing, gx, gw, B, w_shape, geo, w_contiguous)
    return sum(c * v for c, v in zip(table[key], f))


def candidates(gx: int, gw: int, dense: bool) -> list[tuple[str, str]]:
    """The (path, pairing) pairs that apply (the fused Linear paths pair by construction)."""
    paths = [p for p in (DENSE_PATHS if dense else CONV_PATHS) if applicable(p, gx, gw, dense)]
    return [(p, q) for p in paths for q in PAIRINGS if not (dense and p in FUSED and q == "separate")]


def choose(layer: str, mid, rad, w, geo: Geometry | None) -> Choice:
    """The (path, pairing) for this interval step: forced, else the cheapest predicted, else the default."""
    gx, gw, B = max(mid.shape[0], rad.shape[0]), w.shape[0], mid.shape[1]
    dense = geo is None
    forced_path, forced_pairing = _force.get() or (None, None)
    if forced_path is not None and any(p == forced_path for p, _ in candidates(gx, gw, dense)):
        pick, predicted = (forced_path, "paired" if dense and forced_path in FUSED else forced_pairing or "separate"), {}
    else:
        pick, predicted = _cheapest(mid.device.type, gx, gw, B, tuple(w.shape), geo, w.is_contiguous(), forced_pairing)
        predicted = dict(predicted)
    choice = Choice(layer, gx, gw, B, pick[0], pick[1], predicted)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s", choice)
    rec = _record.get()
    if rec is not None:
        rec.append(choice)
    return choice


@functools.lru_cache(maxsize=4096)
def _cheapest(device_type: str, gx: int, gw: int, B: int, w_shape: tuple, geo: Geometry | None, w_contiguous: bool,
              pairing: str | None) -> tuple[tuple[str, str], tuple]:
    """(pick, predicted items) of a layer shape: the cheapest predicted (path, pairing), else the default.
    Cached: the prediction's Python cost (75 us a layer) made the MLP's P = 1 IBP pass 7 % slower than
    the reference backend's, which picks nothing; COSTS is read once per shape."""
    dense = geo is None
    cands = candidates(gx, gw, dense)
    if pairing is not None:
        cands = [c for c in cands if c[1] == pairing or dense and c[0] in FUSED]
    predicted = {}
    for p, q in cands:
        t = predict(device_type, p, q, gx, gw, B, w_shape, geo, w_contiguous)
        if t is not None:
            predicted[(p, q)] = t
    if predicted:
        return min(predicted, key=predicted.get), tuple(predicted.items())
    one = "stacked" if gx < gw else "folded" if gw < gx else "grouped"  # no cost model: one call for all members
    return (("op", "paired") if dense else (one, pairing or "separate")), ()
