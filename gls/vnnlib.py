"""VNN-LIB properties (the VNN-COMP convention): a box on the inputs X_i and a disjunction of conjunctions of
linear constraints on the outputs Y_j that a counterexample must satisfy ("unsat" = the property holds).

write_vnnlib writes the robustness query of one sample: the box [lo, hi] (each bound as Python's repr of
the float64 value, which reads back to the same float exactly) and the clauses (and (>= Y_j Y_y)) for
every j != y. read_vnnlib reads the box-and-disjunction form: input asserts are bounds on single X_i;
output asserts are linear (in)equalities between Y terms and numbers ((+ ...), (- ...), (* c ...)),
combined with and/or; asserts are conjoined. It gives the box and, per clause, rows of a specification
C with offsets d: a clause is infeasible on the box when some row has min over the box of C_r y > d_r,
so the property is proved when every clause has such a row.

ball_of_box turns a box into gls's region [x - eps, x + eps] clipped to a domain, containing it and at
most a few float64 ulps wider; a box of another shape is refused.
"""
from __future__ import annotations

import os
import re
from typing import NamedTuple

import torch


class VnnlibError(ValueError):
    """A VNN-LIB file outside the form read here; the message says what and where."""


class Property(NamedTuple):
    """lo, hi (N,) float64: the input box. C (S, K) float64 and d (S,): rows of the clauses, each row
    proving its clause infeasible when min C_r y > d_r. clauses: per clause, the indices of its rows."""

    lo: torch.Tensor
    hi: torch.Tensor
    C: torch.Tensor
    d: torch.Tensor
    clauses: list


def write_vnnlib(path: str | os.PathLike, lo, hi, label: int, num_classes: int) -> None:
    """The robustness property of a sample of class `label`: inputs in [lo, hi] (flat, (N,)) and the
    negated condition "some other logit Y_j is >= Y_label"."""
    lo = torch.as_tensor(lo).reshape(-1).double().tolist()
    hi = torch.as_tensor(hi).reshape(-1).double().tolist()
    if len(lo) != len(hi):
        raise ValueError(f"lo and hi differ in length: {len(lo)} and {len(hi)}")
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is not a class of {num_classes}")
    lines = [f"; robustness of a sample of class {label}: unsat = every Y_j < Y_{label} on the box", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)] + [""]
    for i, (a, b) in enumerate(zip(lo, hi)):
        lines += [f"(assert (<= X_{i} {b!r}))", f"(assert (>= X_{i} {a!r}))"]
    clauses = "\n".join(f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label)
    lines += ["", f"(assert (or\n{clauses}\n))", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ------------------------------------------------------------------------------------------ reading
_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


def _parse(text: str, where: str) -> list:
    text = re.sub(r";[^\n]*", "", text)
    stack, out = [], []
    for tok in _TOKEN.findall(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if not stack:
                raise VnnlibError(f"{where}: unbalanced ')'")
            e = stack.pop()
            (stack[-1] if stack else out).append(e)
        else:
            if not stack:
                raise VnnlibError(f"{where}: {tok!r} outside any expression")
            stack[-1].append(tok)
    if stack:
        raise VnnlibError(f"{where}: unbalanced '('")
    return out


def _show(e) -> str:
    return e if isinstance(e, str) else "(" + " ".join(_show(x) for x in e) + ")"


def _linear(e, where):
    """A term as ({(kind, index): coefficient}, constant)."""
    if isinstance(e, str):
        m = _VAR.match(e)
        if m:
            return {(m.group(1), int(m.group(2))): 1.0}, 0.0
        try:
            return {}, float(e)
        except ValueError:
            raise VnnlibError(f"{where}: unknown term {e!r}") from None
    if not e or e[0] not in ("+", "-", "*"):
        raise VnnlibError(f"{where}: unsupported term {_show(e)[:80]}")
    parts = [_linear(x, where) for x in e[1:]]
    if e[0] == "*":
        consts = [c for v, c in parts if not v]
        if len(parts) - len(consts) > 1:
            raise VnnlibError(f"{where}: non-linear term {_show(e)[:80]}")
        k = 1.0
        for v, c in parts:
            if not v:
                k *= c
        v, c = next(((v, c) for v, c in parts if v), ({}, 1.0))
        return {n: k * a for n, a in v.items()}, k * c
    if e[0] == "+":
        sign = [1.0] * len(parts)
    else:  # (- a) negates, (- a b c) is a - b - c
        sign = [-1.0] if len(parts) == 1 else [1.0] + [-1.0] * (len(parts) - 1)
    coef, const = {}, 0.0
    for s, (v, c) in zip(sign, parts):
        for n, a in v.items():
            coef[n] = coef.get(n, 0.0) + s * a
        const += s * c
    return coef, const


def _atom(e, where):
    """(<= a b) / (>= a b) as g >= 0 with g = ({var: coef}, const); (= a b) as two."""
    if not isinstance(e, list) or len(e) != 3 or e[0] not in ("<=", ">=", "="):
        raise VnnlibError(f"{where}: expected (<= a b), (>= a b) or (= a b), got {_show(e)[:80]}")
    (va, ca), (vb, cb) = _linear(e[1], where), _linear(e[2], where)
    diff = {n: va.get(n, 0.0) - vb.get(n, 0.0) for n in set(va) | set(vb)}, ca - cb  # a - b
    neg = {n: -a for n, a in diff[0].items()}, -diff[1]
    return {"<=": [neg], ">=": [diff], "=": [diff, neg]}[e[0]]


def _dnf(e, where) -> list[list]:
    """An assert's formula as clauses (lists of atoms g >= 0) in disjunctive normal form."""
    if isinstance(e, list) and e and e[0] == "or":
        return [c for x in e[1:] for c in _dnf(x, where)]
    if isinstance(e, list) and e and e[0] == "and":
        out = [[]]
        for x in e[1:]:
            out = [a + b for a in out for b in _dnf(x, where)]
            if len(out) > 100_000:
                raise VnnlibError(f"{where}: the formula expands to more than 100000 clauses")
        return out
    return [[_atom(e, where)]]


def read_vnnlib(path: str | os.PathLike, num_inputs: int | None = None, num_outputs: int | None = None) -> Property:
    """The Property of a VNN-LIB file (see the module docstring); num_inputs/num_outputs, when given, are
    checked against the declared X_i / Y_j."""
    where = str(path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise VnnlibError(f"cannot read {path}: {e.strerror}") from None
    declared = {"X": set(), "Y": set()}
    box: dict[int, list] = {}
    out_clauses = [[]]
    for e in _parse(text, where):
        if not e or not isinstance(e[0], str):
            raise VnnlibError(f"{where}: unexpected {_show(e)[:80]}")
        if e[0] == "declare-const":
            m = _VAR.match(e[1]) if len(e) == 3 else None
            if m is None:
                raise VnnlibError(f"{where}: declare only X_i and Y_j, got {_show(e)[:80]}")
            declared[m.group(1)].add(int(m.group(2)))
        elif e[0] == "assert" and len(e) == 2:
            clauses = _dnf(e[1], where)
            kinds = {n[0] for c in clauses for atoms in c for g in atoms for n in g[0]}
            if kinds == {"X"}:
                if len(clauses) != 1:
                    raise VnnlibError(f"{where}: disjunctions over the inputs are not supported: {_show(e)[:80]}")
                for atoms in clauses[0]:
                    for coef, const in atoms:
                        _bound(box, coef, const, where, e)
            elif kinds == {"Y"}:
                out_clauses = [a + [g for atoms in c for g in atoms] for a in out_clauses for c in clauses]
            else:
                raise VnnlibError(f"{where}: an assert must constrain inputs alone or outputs alone: {_show(e)[:80]}")
        else:
            raise VnnlibError(f"{where}: unsupported command {_show(e)[:80]}")
    n, k = len(declared["X"]), len(declared["Y"])
    if declared["X"] != set(range(n)) or declared["Y"] != set(range(k)) or not n or not k:
        raise VnnlibError(f"{where}: declare X_0..X_(N-1) and Y_0..Y_(K-1) (got {n} X and {k} Y)")
    for name, want, got in (("inputs", num_inputs, n), ("outputs", num_outputs, k)):
        if want is not None and want != got:
            raise VnnlibError(f"{where} declares {got} {name}, the network has {want}")
    missing = [i for i in range(n) if i not in box or None in box[i]]
    if missing:
        raise VnnlibError(f"{where}: X_{missing[0]} lacks a lower or an upper bound ({len(missing)} inputs do)")
    lo = torch.tensor([box[i][0] for i in range(n)], dtype=torch.float64)
    hi = torch.tensor([box[i][1] for i in range(n)], dtype=torch.float64)
    if (lo > hi).any():
        raise VnnlibError(f"{where}: the input box is empty (X_{int((lo > hi).nonzero()[0])} has lower > upper bound)")
    if out_clauses == [[]]:
        raise VnnlibError(f"{where}: no assert on the outputs Y_j")
    rows, d, clauses = [], [], []
    for c in out_clauses:
        idx = []
        for coef, const in c:
            row = torch.zeros(k, dtype=torch.float64)
            for (_, j), a in coef.items():
                if j >= k:
                    raise VnnlibError(f"{where}: Y_{j} is not declared")
                row[j] = -a
            idx.append(len(rows))
            rows.append(row)
            d.append(const)
        clauses.append(idx)
    return Property(lo, hi, torch.stack(rows), torch.tensor(d, dtype=torch.float64), clauses)


def _bound(box, coef, const, where, e):
    """coef . X + const >= 0 with a single X_i: a lower or an upper bound of it."""
    if len(coef) != 1:
        raise VnnlibError(f"{where}: input constraints must bound a single X_i: {_show(e)[:80]}")
    (_, i), a = next(iter(coef.items()))
    if a == 0:
        raise VnnlibError(f"{where}: zero coefficient in {_show(e)[:80]}")
    v = -const / a  # a X + const >= 0  <=>  X >= v (a > 0) or X <= v (a < 0); exact when a = +-1
    slot = box.setdefault(i, [None, None])
    if a > 0:
        slot[0] = v if slot[0] is None else max(slot[0], v)
    else:
        slot[1] = v if slot[1] is None else min(slot[1], v)


def verdict(lower: torch.Tensor, prop: Property) -> torch.Tensor:
    """Per clause, whether it is proved infeasible: some row with lower bound of C_r y > d_r. lower (..., S)."""
    ok = lower > prop.d.to(lower)
    return torch.stack([ok[..., idx].any(-1) for idx in prop.clauses], -1)


def ball_of_box(lo: torch.Tensor, hi: torch.Tensor):
    """(x, eps, domain) whose region [x - eps, x + eps] clipped to the domain (gls.problem.input_region, in
    float64) holds the box [lo, hi] and is at most a few ulps wider; x (N,) float64. VnnlibError when the
    box is not such a region (a dimension narrower than the others that touches neither end of the domain)."""
    from gls.problem import input_region

    lo, hi = lo.double(), hi.double()
    d_lo, d_hi = float(lo.min()) + 0.0, float(hi.max()) + 0.0  # + 0.0: no -0.0
    w = float(((hi - lo) / 2).max())
    scale = max(abs(d_lo), abs(d_hi), w)
    w_out = w + 4 * torch.finfo(torch.float64).eps * scale  # room for the rounding of x and of x -+ eps
    at_lo, at_hi = lo == d_lo, hi == d_hi
    x = torch.where(at_lo & ~at_hi, hi - w, torch.where(at_hi & ~at_lo, lo + w, (lo + hi) / 2))
    r_lo, r_hi = input_region(x.unsqueeze(0), w_out, (d_lo, d_hi))
    r_lo, r_hi = r_lo[0], r_hi[0]
    tol = 64 * torch.finfo(torch.float64).eps * scale
    if not ((r_lo <= lo).all() and (r_hi >= hi).all()):
        raise VnnlibError("cannot place the box inside an eps-ball region (rounding); please report this box")
    wide = (lo - r_lo > tol) | (r_hi - hi > tol)
    if wide.any():
        i = int(wide.nonzero()[0])
        raise VnnlibError(f"the input box is not an L-inf ball [x - eps, x + eps] clipped to a domain (X_{i} spans "
                          f"[{float(lo[i])!r}, {float(hi[i])!r}], narrower than 2 eps = {2 * w!r} without touching the "
                          f"domain [{d_lo!r}, {d_hi!r}]); gls bounds only such regions")
    return x, w_out, (d_lo, d_hi)
