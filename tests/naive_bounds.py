"""A deliberately naive oracle for gls.compute_bounds: one sample, one member, one layer at a time.

Independent of gls.net/gls.bounds: every affine module is turned into an explicit dense matrix by
probing the torch module itself with basis vectors (float64), and the bounds are computed with
explicit loops over layers, samples and members. Definitions (docs/design.md §3 and the gls.bounds
docstring): BatchNorm directly after a Linear/Conv2d is merged into it; IBP elides C into the last
affine layer; hbox/deeppoly intermediate bounds back-substitute every neuron and intersect with IBP;
every intermediate bound is pushed out by gls's rounding margin (8 eps of its magnitude).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from gls.problem import method_name


def _leaves(module):
    for m in module._modules.values():  # repeats included (children() drops a module used twice)
        if isinstance(m, nn.Sequential):
            yield from _leaves(m)
        elif not isinstance(m, nn.Identity):
            yield m


def dense_layers(model: nn.Sequential, member: dict, in_shape):
    """[("affine", W, b) | ("relu",)] for one member's parameters, float64, BN merged into Linear/Conv."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(member[name])
    layers, shape, prev_is_map = [], tuple(in_shape), False
    for leaf in _leaves(m):
        if isinstance(leaf, nn.ReLU):
            layers.append(("relu",))
            prev_is_map = False
            continue
        if isinstance(leaf, nn.Flatten):
            shape = (int(torch.tensor(shape).prod()),)
            prev_is_map = False  # a BN after a Flatten is not merged
            continue
        n = int(torch.tensor(shape).prod())
        with torch.no_grad():
            zero = leaf(torch.zeros(1, *shape, dtype=torch.float64))
            basis = leaf(torch.eye(n, dtype=torch.float64).reshape(n, *shape))
        out_shape = tuple(zero.shape[1:])
        b = zero.reshape(-1)
        W = (basis.reshape(n, -1) - b).T.contiguous()
        if isinstance(leaf, (nn.BatchNorm1d, nn.BatchNorm2d)) and prev_is_map:
            _, W0, b0 = layers.pop()
            W, b = W @ W0, W @ b0 + b
        layers.append(("affine", W, b))
        shape = out_shape
        prev_is_map = isinstance(leaf, (nn.Linear, nn.Conv2d))
    return layers


def rounding_scale(model: nn.Sequential, member: dict, lo, hi, in_shape):
    """|W_L| ... |W_1| max(|lo|, |hi|) + |biases|: the rounding scale of the logits, (K,) float64 (the sum of
    the magnitudes a float computation adds: no cancellation can make an error larger than a multiple of it)."""
    m = torch.maximum(lo.abs(), hi.abs())
    for layer in dense_layers(model, member, in_shape):
        if layer[0] == "affine":
            m = layer[1].abs() @ m + layer[2].abs()
    return m


def pgd(f, lo, hi, sign, steps=20):
    """Points of [lo, hi] (n, N) pushing sign * f(points) (n,) down; f is differentiable."""
    x = lo + torch.rand_like(lo) * (hi - lo)
    step = (hi - lo) / 4
    for _ in range(steps):
        x.requires_grad_(True)
        g, = torch.autograd.grad((sign * f(x)).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step * g.sign(), lo), hi)
        step = step * 0.85
    return x.detach()


def relax(l, u, method):
    """Lines (a_l, c_l, a_u, c_u) per neuron, written out case by case."""
    n = len(l)
    a_l, c_l, a_u, c_u = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
    for i in range(n):
        li, ui = float(l[i]), float(u[i])
        if li >= 0:
            a_l[i] = a_u[i] = 1.0
        elif ui <= 0:
            pass
        elif method in ("ibp", "hbox"):
            c_u[i] = ui
        else:
            a_u[i] = ui / (ui - li)
            c_u[i] = -li * ui / (ui - li)
            a_l[i] = 1.0 if ui > -li else 0.0
    return a_l, c_l, a_u, c_u


def _box_affine(W, b, l, u):
    Wp, Wn = W.clamp(min=0), W.clamp(max=0)
    return Wp @ l + Wn @ u + b, Wp @ u + Wn @ l + b


def _backsub(A, layers, stop, lines, lo, hi):
    """Lower bounds of the rows of A . (output of layers[stop - 1]) over the input box."""
    const = torch.zeros(A.shape[0], dtype=torch.float64)
    for k in range(stop - 1, -1, -1):
        layer = layers[k]
        if layer[0] == "affine":
            const = const + A @ layer[2]
            A = A @ layer[1]
        else:
            a_l, c_l, a_u, c_u = lines[k]
            Ap, An = A.clamp(min=0), A.clamp(max=0)
            const = const + Ap @ c_l + An @ c_u
            A = Ap * a_l + An * a_u
    return A.clamp(min=0) @ lo + A.clamp(max=0) @ hi + const


def margin(scale):
    """The outward rounding margin gls puts on intermediate bounds: 8 eps(float64) of their magnitude."""
    return scale * (8 * torch.finfo(torch.float64).eps)


def bound_one(layers, C, lo, hi, method, intersect=True):
    """Lower bounds of C z over [lo, hi] (flat float64 vectors) for one sample and one member; without
    `intersect`, hbox/deeppoly use the back-substituted intermediate bounds alone (plain CROWN)."""
    l, u = lo.clone(), hi.clone()
    lines = {}
    last = max(k for k, layer in enumerate(layers) if layer[0] == "affine")
    for k, layer in enumerate(layers):
        if k == last and method == "ibp":
            W, b = C @ layer[1], C @ layer[2]
            return _box_affine(W, b, l, u)[0]
        if layer[0] == "affine":
            l, u = _box_affine(layer[1], layer[2], l, u)
            continue
        d = margin(torch.maximum(l.abs(), u.abs()))  # gls's rounding margin on every intermediate bound
        l, u = l - d, u + d
        if method in ("hbox", "deeppoly"):  # every neuron, then intersect with IBP
            n = len(l)
            eye = torch.eye(n, dtype=torch.float64)
            bl = _backsub(eye, layers, k, lines, lo, hi) - d
            bu = -_backsub(-eye, layers, k, lines, lo, hi) + d
            l_ref, u_ref = (torch.maximum(l, bl), torch.minimum(u, bu)) if intersect else (bl, bu)
        else:
            l_ref, u_ref = l, u
        lines[k] = relax(l_ref, u_ref, method)
        l, u = l.clamp(min=0), u.clamp(min=0)  # IBP continues from the plain IBP box
    return _backsub(C, layers, len(layers), lines, lo, hi)


def naive_bounds(model, members: list[dict], x, eps, C, method, domain=(0.0, 1.0), intersect=True):
    """Lower bounds (P, B, S) by loops over members and samples; eps a float."""
    method = method_name(method)
    x = x.double()
    out = torch.zeros(len(members), x.shape[0], C.shape[1], dtype=torch.float64)
    for p, member in enumerate(members):
        layers = dense_layers(model, member, x.shape[1:])
        for i in range(x.shape[0]):
            lo, hi = x[i].reshape(-1) - eps, x[i].reshape(-1) + eps
            if domain is not None:
                lo, hi = lo.clamp(min=domain[0]), hi.clamp(max=domain[1])
            out[p, i] = bound_one(layers, C[i].double(), lo, hi, method, intersect)
    return out
