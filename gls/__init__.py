"""gls: population-batched bound propagation (IBP, hBox, CROWN-IBP, DeepPoly, alpha-CROWN), Gaussian Loss
Smoothing certified training, and ONNX/VNN-LIB in and out. See docs/design.md; the public names are
re-exported here."""
from gls import nn, noise
from gls.alpha_crown import alpha_crown_bounds  # registers compute_bounds(method="alpha-crown")
from gls.bounds import METHODS, Bounds, compute_bounds, margin_spec
from gls.loss import robust_loss
from gls.net import Network, ParamLayout
from gls.onnx_io import from_onnx, to_onnx
from gls.problem import certified

__all__ = ["nn", "noise", "METHODS", "Bounds", "compute_bounds", "alpha_crown_bounds", "margin_spec", "certified",
           "robust_loss", "Network", "ParamLayout", "from_onnx", "to_onnx"]
