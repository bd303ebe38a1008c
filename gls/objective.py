"""The training objective as a population loss: theta_pop (P, d) -> per-member loss (P,).

``(1 - w) * CE(natural logits) + w * robust``, the robust term being CTBench's cross-entropy on the
lower bounds of the margins (gls.robust_loss) under the chosen relaxation at the current eps. Every
member is bounded in one gls.compute_bounds pass on the shared mini-batch. At eps = 0 the robust term
equals the natural cross-entropy exactly, so no bounds are computed then.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gls.bounds import compute_bounds
from gls.loss import robust_loss
from gls.net import Network


def population_loss(net: Network, x: torch.Tensor, y: torch.Tensor, *, eps: float, relaxation: str,
                    robust_weight: float, domain=(0.0, 1.0), backend=None, record: dict | None = None):
    """A PopulationLoss for one mini-batch. If `record` is given, each call appends there the batch's
    per-member natural and certified accuracy (fractions) and losses for the metrics; clear it per step."""

    def loss(theta_pop: torch.Tensor) -> torch.Tensor:
        params = net.layout.unflatten(theta_pop)
        logits = net.forward(x, params=params)  # (P, B, K)
        P, B, K = logits.shape
        natural = F.cross_entropy(logits.reshape(P * B, K), y.repeat(P), reduction="none").view(P, B).mean(1)
        nat_acc = (logits.argmax(-1) == y).float().mean(1)
        if eps > 0 and robust_weight > 0:
            lower = compute_bounds(net, x, eps, method=relaxation, labels=y, params=params, domain=domain,
                                   backend=backend).lower
            robust = robust_loss(lower)
            cert = (lower > 0).all(-1).float().mean(1)
        else:
            robust, cert = natural, nat_acc if eps == 0 else torch.full_like(nat_acc, float("nan"))
        if record is not None:  # members evaluated in chunks append to what earlier calls stored
            for key, value in (("natural_acc", nat_acc), ("certified_acc", cert), ("natural_loss", natural),
                               ("robust_loss", robust)):
                value = value.detach()
                record[key] = torch.cat([record[key], value]) if key in record else value
        return (1 - robust_weight) * natural + robust_weight * robust

    return loss
