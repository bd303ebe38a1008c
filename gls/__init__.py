"""gls: population-batched bound propagation (IBP, hBox, CROWN-IBP, DeepPoly) and Gaussian Loss
Smoothing certified training. See docs/design.md; the public names are re-exported here."""
from gls import nn, noise
from gls.bounds import METHODS, Bounds, compute_bounds, margin_spec
from gls.loss import robust_loss
from gls.net import Network, ParamLayout
from gls.problem import certified

__all__ = ["nn", "noise", "METHODS", "Bounds", "compute_bounds", "margin_spec", "certified", "robust_loss", "Network", "ParamLayout"]
