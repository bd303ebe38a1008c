"""The training objective as a population loss: theta_pop (P, d) -> per-member loss (P,).

``(1 - w) * CE(natural logits) + w * robust``, the robust term being CTBench's cross-entropy on the
lower bounds of the margins (gls.robust_loss) under the chosen relaxation at the current eps. Every
member is bounded in one gls.compute_bounds pass on the shared mini-batch. At eps = 0 the robust term
equals the natural cross-entropy exactly, so no bounds are computed then.

``sample_chunk`` bounds memory (gls.memory plans it): the mini-batch is evaluated that many samples at
a time and the pieces, each weighted by its share of the batch, add up to the batch mean. Without
autograd (PGPE) a piece's tensors are freed before the next; with autograd a caller that runs the
backward pass piece by piece (RGS) iterates ``loss.parts(theta_pop)`` instead of calling ``loss``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gls.bounds import compute_bounds
from gls.loss import robust_loss
from gls.net import Network
from gls.problem import certified

_METRICS = ("natural_acc", "certified_acc", "natural_loss", "robust_loss")


def population_loss(net: Network, x: torch.Tensor, y: torch.Tensor, *, eps: float, relaxation: str,
                    robust_weight: float, domain=(0.0, 1.0), backend=None, record: dict | None = None,
                    sample_chunk: int | None = None, budget: int | None = None):
    """A PopulationLoss for one mini-batch. If `record` is given, each call appends there the batch's
    per-member natural and certified accuracy (fractions) and losses for the metrics; clear it per step.
    `sample_chunk`: samples per pass (None: the whole batch); see the module docstring. `budget`: bytes a
    bound pass may hold (gls.compute_bounds; None: its default)."""
    B = x.shape[0]
    chunk = B if not sample_chunk or sample_chunk >= B else int(sample_chunk)
    pieces = [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, B, chunk)] if B else [(x, y)]

    def piece_loss(theta_pop: torch.Tensor, xs, ys, acc: dict) -> torch.Tensor:
        params = net.layout.unflatten(theta_pop)
        logits = net.forward(xs, params=params)  # (P, b, K)
        P, b, K = logits.shape
        natural = F.cross_entropy(logits.reshape(P * b, K), ys.repeat(P), reduction="none").view(P, b).mean(1)
        nat_acc = (logits.argmax(-1) == ys).float().mean(1)
        if eps > 0 and robust_weight > 0:
            lower = compute_bounds(net, xs, eps, method=relaxation, labels=ys, params=params, domain=domain,
                                   backend=backend, budget=budget).lower
            robust = robust_loss(lower)
            cert = certified(lower).float().mean(1)
        else:
            robust, cert = natural, nat_acc if eps == 0 else torch.full_like(nat_acc, float("nan"))
        share = b / B  # exactly 1 for an unchunked batch, so its numbers are unchanged
        for key, value in zip(_METRICS, (nat_acc, cert, natural, robust)):
            value = value.detach() * share if len(pieces) > 1 else value.detach()
            acc[key] = acc[key] + value if key in acc else value
        out = (1 - robust_weight) * natural + robust_weight * robust
        return out * share if len(pieces) > 1 else out

    def flush(acc: dict) -> None:
        if record is not None:  # members evaluated in chunks append to what earlier calls stored
            for key, value in acc.items():
                record[key] = torch.cat([record[key], value]) if key in record else value

    def parts(theta_pop: torch.Tensor):
        """The weighted per-piece losses (P,), one piece at a time; they sum to loss(theta_pop)."""
        acc: dict = {}
        for xs, ys in pieces:
            yield piece_loss(theta_pop, xs, ys, acc)
        flush(acc)

    def loss(theta_pop: torch.Tensor) -> torch.Tensor:
        acc: dict = {}
        total = None
        for xs, ys in pieces:
            part = piece_loss(theta_pop, xs, ys, acc)
            total = part if total is None else total + part
        flush(acc)
        return total

    loss.parts = parts
    return loss
