"""Network IR: an nn.Sequential parsed once into affine maps and ReLUs, bound to population parameters.

Supported layers: gls.nn.Normalize, nn.Linear, nn.Conv2d (any stride, padding, dilation; groups = 1,
zero padding), nn.ReLU, nn.Flatten (start_dim = 1), nn.BatchNorm1d/2d and nn.Identity; nested
Sequentials are flattened. A subclass of one counts as that layer only if it computes what the layer
computes: one that redefines forward or what forward calls or reads (__call__, _conv_forward, a weight
made a property by a parametrization), on its class or its instance, or that has forward hooks, is
refused, since gls would bound the plain layer instead. Anything else is refused, naming the layer,
its class and its position.

BatchNorm is always evaluated in eval form, with the model's running statistics (buffers shared by
every member) and per-member weight and bias (parameters). One that directly follows a Linear or Conv2d
is folded into it (W' = s W, b' = s b + t per output channel); any other is an elementwise map, like
Normalize. Flatten only changes the bookkeeping: activations are kept flat throughout.

Population parameters are a dict {name: (P, *shape)} with model.named_parameters()'s names in its
order, exactly what torch.func.stack_module_state produces; ParamLayout maps them to and from a flat
(P, d) vector for the optimisers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gls.affine import Conv, Dense, Diag
from gls.nn import Normalize

_AFFINE = ("linear", "conv", "normalize", "batchnorm")


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of the parameters, in model.named_parameters() order; d = numel."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def check(self, params: dict) -> int:
        """Validate a population dict (names, shapes, one P, one floating dtype and device) -> P."""
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict {{name: tensor (P, *shape)}}, got {type(params).__name__}")
        missing = [n for n in self.names if n not in params]
        extra = [n for n in params if n not in self.shapes_by_name]
        if missing or extra:
            raise ValueError(f"params do not match the network: missing {missing}, unexpected {extra}")
        P, ref = None, None
        for name, shape in zip(self.names, self.shapes):
            t = params[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"params[{name!r}] must be a tensor, got {type(t).__name__}")
            if t.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"params[{name!r}] must be float32 or float64, got {t.dtype}")
            if t.device.type == "meta":
                raise ValueError(f"params[{name!r}] is a meta tensor (no values); materialise the model first")
            if t.dim() != len(shape) + 1 or t.shape[1:] != shape:
                raise ValueError(f"params[{name!r}] must have shape (P, {', '.join(map(str, shape))}), got {tuple(t.shape)}")
            if P is None:
                P, ref = t.shape[0], t
            elif t.shape[0] != P:
                raise ValueError(f"params disagree on the population size: {name!r} has {t.shape[0]} members, "
                                 f"{self.names[0]!r} has {P}")
            elif t.dtype != ref.dtype or t.device != ref.device:
                raise ValueError(f"params[{name!r}] is {t.dtype} on {t.device}, but {self.names[0]!r} is "
                                 f"{ref.dtype} on {ref.device}")
        if P == 0:
            raise ValueError("params hold an empty population (P = 0)")
        return 1 if P is None else P

    @property
    def shapes_by_name(self) -> dict:
        return dict(zip(self.names, self.shapes))

    def flatten(self, params: dict) -> torch.Tensor:
        """{name: (P, *shape)} -> theta (P, d), names in layout order."""
        P = self.check(params)
        if not self.names:
            return torch.zeros(P, 0)
        return torch.cat([params[n].reshape(P, -1) for n in self.names], dim=1)

    def unflatten(self, theta: torch.Tensor) -> dict:
        """theta (P, d) or (d,) (P = 1) -> {name: (P, *shape)}, views into theta (differentiable)."""
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a tensor, got {type(theta).__name__}")
        if theta.dim() == 1:
            theta = theta.unsqueeze(0)
        if theta.dim() != 2 or theta.shape[1] != self.numel:
            raise ValueError(f"theta must have shape (P, {self.numel}) or ({self.numel},), got {tuple(theta.shape)}")
        P = theta.shape[0]
        chunks = torch.split(theta, self.sizes, dim=1)
        return {n: c.reshape(P, *s) for n, c, s in zip(self.names, chunks, self.shapes)}


@dataclass(frozen=True)
class _Layer:
    kind: str  # linear | conv | normalize | batchnorm | relu | flatten
    position: str  # the module's name in the Sequential, e.g. "3" or "features.1"
    module: nn.Module


def _describe(position: str, module: nn.Module) -> str:
    return f"layer {position} ({type(module).__name__})"


_SUPPORTED = ("supported: Normalize, Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d (eval form), Identity and "
              "nested Sequentials, or subclasses of them that keep their forward")
_CALL = ("forward", "__call__", "_call_impl", "_wrapped_call_impl", "__getattr__", "__getattribute__")
_BN = ("weight", "bias", "running_mean", "running_var")
# The known layers, each with what its forward calls or reads besides _CALL and the plain attributes
# its __init__ sets: a module that redefines any of them computes something else.
_KNOWN = {nn.Sequential: ("__iter__",), nn.Identity: (), nn.ReLU: (), nn.Linear: ("weight", "bias"),
          nn.Conv2d: ("_conv_forward", "weight", "bias"), nn.BatchNorm1d: _BN, nn.BatchNorm2d: _BN,
          Normalize: ("mean", "std"), nn.Flatten: ()}


def _known_layer(where: str, m: nn.Module) -> type:
    """The layer gls bounds m as (a class of _KNOWN); ValueError naming `where` if m is none of them, or
    computes something else than that layer (its own forward, a redefined method or weight, hooks)."""
    base = next((cls for cls in _KNOWN if isinstance(m, cls)), None)
    if base is None:
        raise ValueError(f"unsupported {where}; {_SUPPORTED}")
    reads, mro = _CALL + _KNOWN[base], type(m).__mro__
    own = [name for cls in mro[:mro.index(base)] for name in vars(cls) if name in reads]
    own += [name for name in vars(m) if name in reads]  # set on the instance itself
    why = [f"redefines {', '.join(dict.fromkeys(own))}"] if own else []
    if m._forward_hooks or m._forward_pre_hooks:
        why.append("has forward hooks")
    if why:
        raise ValueError(f"{where} is a {base.__name__} that {' and '.join(why)}: gls would bound "
                         f"a plain {base.__name__} instead, so it refuses it; {_SUPPORTED}")
    return base


def _parse(module: nn.Module, prefix: str = "", seen: dict | None = None) -> list[_Layer]:
    """Every position of the Sequential, repeats included (named_children() would drop a module object
    that appears twice, silently bounding a different network)."""
    seen = {} if seen is None else seen
    out = []
    for name, m in module._modules.items():
        if m is None:
            continue
        pos = prefix + name
        stateful = next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
        if stateful and id(m) in seen:
            raise ValueError(f"{_describe(pos, m)} is the same module object as layer {seen[id(m)]}; a layer used "
                             "twice shares its parameters, which gls cannot bound per member: give every layer "
                             "its own module")
        seen.setdefault(id(m), pos)
        _known_layer(_describe(pos, m), m)
        if isinstance(m, nn.Sequential):
            out += _parse(m, pos + ".", seen)
        elif isinstance(m, nn.Identity):
            continue
        elif isinstance(m, nn.ReLU):
            out.append(_Layer("relu", pos, m))
        elif isinstance(m, nn.Linear):
            out.append(_Layer("linear", pos, m))
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(f"{_describe(pos, m)}: grouped convolutions (groups={m.groups}) are not supported")
            if m.padding_mode != "zeros":
                raise ValueError(f"{_describe(pos, m)}: padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
            if isinstance(m.padding, str) and m.padding != "valid" and any(d * (k - 1) % 2 for d, k in zip(m.dilation, m.kernel_size)):
                raise ValueError(f"{_describe(pos, m)}: padding='same' with an even receptive field is asymmetric; not supported")
            out.append(_Layer("conv", pos, m))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None or m.running_var is None:
                raise ValueError(f"{_describe(pos, m)}: needs running statistics (track_running_stats=True)")
            out.append(_Layer("batchnorm", pos, m))
        elif isinstance(m, Normalize):
            out.append(_Layer("normalize", pos, m))
        else:  # nn.Flatten
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"{_describe(pos, m)}: only Flatten(start_dim=1, end_dim=-1) is supported")
            out.append(_Layer("flatten", pos, m))
    return out


def conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    """A Conv2d's padding as numbers ('same' is symmetric here: odd reach; the parser refuses the rest)."""
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return tuple(m.padding)


def _extremes(t: torch.Tensor) -> list[torch.Tensor]:
    """The smallest and largest entries of t, 0-d each: all are finite exactly when these are (min and max
    propagate NaN). One pass without temporaries, where torch.isfinite(t).all() wrote and read a mask
    and a copy: 3.7 s of a 4.9 s CNN7 IBP pass at P = 16. Member by member when the members are not
    one block (a population's members are views into one (P, d) tensor) and large: a reduction over
    such a view ran 4x slower than over its members, while small members cost more in calls."""
    if not t.is_floating_point() or t.numel() == 0:
        return []
    large = t.dim() > 1 and t[0].numel() >= 1 << 12
    parts = t.unbind(0) if large and not t.is_contiguous() else (t,)
    return [e for part in parts for e in torch.aminmax(part)]


class Network:
    """The IR of an nn.Sequential; see the module docstring. Build with Network.from_module(model)."""

    def __init__(self, module: nn.Sequential, layers: list[_Layer]):
        self.module = module
        self.layers = tuple(layers)
        named = list(module.named_parameters())
        self.layout = ParamLayout(tuple(n for n, _ in named), tuple(p.shape for _, p in named))
        for layer in self.layers:
            own = [n for n, _ in layer.module.named_parameters(prefix=layer.position)]
            if any(n not in self.layout.shapes_by_name for n in own):
                raise ValueError(f"{_describe(layer.position, layer.module)} shares its parameters with an earlier "
                                 "layer; give every layer its own module")

    @classmethod
    def from_module(cls, model) -> "Network":
        if isinstance(model, Network):
            return model
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"expected a torch.nn.Sequential (or a gls.Network), got {type(model).__name__}")
        _known_layer(f"the model ({type(model).__name__})", model)
        layers = _parse(model)
        if not layers:
            raise ValueError("the network has no layers")
        last = layers[-1]
        if last.kind not in _AFFINE:
            raise ValueError(f"the last layer must be affine (it gives the logits), got {_describe(last.position, last.module)}")
        return cls(model, layers)

    @property
    def num_relus(self) -> int:
        return sum(layer.kind == "relu" for layer in self.layers)

    @property
    def has_conv(self) -> bool:
        return any(layer.kind == "conv" for layer in self.layers)

    def params(self, model: nn.Module | None = None) -> dict:
        """The model's own parameters as a P = 1 population (views, so gradients reach the model)."""
        model = self.module if model is None else model
        return {n: p.unsqueeze(0) for n, p in model.named_parameters()}

    def resolve_params(self, params: dict | None) -> tuple[dict, int]:
        """(validated params, P); None -> the model's own parameters. NaN or inf -> ValueError."""
        params = self.params() if params is None else params
        P = self.layout.check(params)
        if params and not torch.isfinite(torch.stack([e for t in params.values() for e in _extremes(t)])).all():
            bad = [n for n, t in params.items() if not torch.isfinite(t).all()]
            raise ValueError(f"params contain NaN or inf: {bad}")
        return params, P

    def plan(self, params: dict, in_shape, dtype: torch.dtype, sound: bool = False) -> list[list]:
        """Bind params to the layers for per-sample input shape in_shape.

        Returns the affine segments between ReLUs: segs[0] maps the input to the first ReLU's
        pre-activation, segs[-1] the last ReLU's output to the logits (len = number of ReLUs + 1).
        Buffers (running statistics, Normalize constants) are cast to dtype. sound: no BatchNorm
        folding (W s would be rounded; as its own Diag the rounding stays elementwise) and every Diag
        carries bounds on the rounding of its s and t (Diag.err), for gls.sound.
        """
        buffers = {n: b.to(dtype) for n, b in self.module.named_buffers()}
        shape = tuple(in_shape)
        segs, i, layers = [[]], 0, self.layers
        while i < len(layers):
            layer = layers[i]
            m, pos, kind = layer.module, layer.position, layer.kind
            where = _describe(pos, m)
            if kind == "relu":
                segs.append([])
            elif kind == "flatten":
                shape = (math.prod(shape),)
            elif kind in ("linear", "conv"):
                W, b = params[pos + ".weight"], params.get(pos + ".bias")
                if kind == "linear":
                    if shape != (m.in_features,):
                        raise ValueError(f"{where} expects flat inputs of {m.in_features} features, gets per-sample shape "
                                         f"{shape}" + (" (add nn.Flatten())" if len(shape) > 1 else ""))
                    out_shape = (m.out_features,)
                else:
                    if len(shape) != 3 or shape[0] != m.in_channels:
                        raise ValueError(f"{where} expects per-sample inputs (C={m.in_channels}, H, W), gets {shape}")
                    pad = conv_padding(m)
                    hw = [(shape[1 + j] + 2 * pad[j] - m.dilation[j] * (m.kernel_size[j] - 1) - 1) // m.stride[j] + 1 for j in range(2)]
                    if min(hw) < 1:
                        raise ValueError(f"{where}: input {shape} is smaller than the kernel")
                    out_shape = (m.out_channels, *hw)
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                if nxt is not None and nxt.kind == "batchnorm" and not sound:
                    s, t, _ = self._bn_affine(nxt, params, buffers, out_shape)
                    scale = s.view(s.shape[0], -1, *[1] * (W.dim() - 2))
                    W = W * scale
                    b = (t if b is None else b * s + t).expand(W.shape[0], -1)  # (P, C) even when t is shared
                    i += 1
                if kind == "linear":
                    op = Dense(W, b)
                else:
                    op = Conv(W, b, tuple(m.stride), pad, tuple(m.dilation), shape, out_shape)
                segs[-1].append(op)
                shape = out_shape
            else:
                s, t, t_mag = (self._bn_affine if kind == "batchnorm" else self._normalize_affine)(layer, params, buffers, shape)
                spread = math.prod(shape[1:])
                err = None
                if sound:  # at most 6 roundings, each of relative size <= u, behind s and behind each term of t
                    g = _gamma(8, dtype)
                    err = ((g * s.abs()).repeat_interleave(spread, dim=1), (g * t_mag).repeat_interleave(spread, dim=1))
                segs[-1].append(Diag(s.repeat_interleave(spread, dim=1), t.repeat_interleave(spread, dim=1), err))
            i += 1
        return segs

    @staticmethod
    def _bn_affine(layer: _Layer, params, buffers, shape):
        """Eval-form BatchNorm as per-channel (s, t, |mean s| + |beta|), (P|1, C): y = x*s + t."""
        m, pos = layer.module, layer.position
        ranks = (3,) if isinstance(m, nn.BatchNorm2d) else (1, 2)
        if len(shape) not in ranks or shape[0] != m.num_features:
            raise ValueError(f"{_describe(pos, m)} with {m.num_features} features cannot follow per-sample shape {shape}")
        mean, var = buffers[pos + ".running_mean"], buffers[pos + ".running_var"]
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all() and (var + m.eps > 0).all()):
            raise ValueError(f"{_describe(pos, m)}: running statistics must be finite with running_var + eps > 0")
        s = (1 / torch.sqrt(var + m.eps)).unsqueeze(0)  # IEEE sqrt and division: gls.sound bounds their error
        gamma, beta = params.get(pos + ".weight"), params.get(pos + ".bias")
        if gamma is not None:
            s = s * gamma
        t = -mean * s
        t_mag = t.abs()
        if beta is not None:
            t = t + beta
            t_mag = t_mag + beta.abs()
        return s, t, t_mag

    @staticmethod
    def _normalize_affine(layer: _Layer, params, buffers, shape):
        """Normalize as per-channel (s, t, |t|), (1, C): y = x/std - mean/std."""
        m, pos = layer.module, layer.position
        mean, std = buffers[pos + ".mean"], buffers[pos + ".std"]
        c = shape[0]
        if max(mean.numel(), std.numel()) not in (1, c) or min(mean.numel(), std.numel()) not in (1, c):
            raise ValueError(f"{_describe(pos, m)} has {mean.numel()} means and {std.numel()} stds; per-sample shape "
                             f"{shape} needs 1 or {c}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std != 0).all()):
            raise ValueError(f"{_describe(pos, m)}: mean and std must be finite with std != 0")
        s = (1 / std).expand(c)
        t = (-mean * s).expand(c).unsqueeze(0)
        return s.unsqueeze(0), t, t.abs()

    def forward(self, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """Natural logits of every member, (P, B, K), for inputs x (B, ...) shared by the population."""
        params, P = self.resolve_params(params)
        x = check_input(x, param_dtype(params, x))
        segs = self.plan(params, x.shape[1:], x.dtype)
        h = x.reshape(1, x.shape[0], -1)
        for k, seg in enumerate(segs):
            if k:
                h = h.relu()
            for op in seg:
                h = op.forward(h)
        return h.expand(P, *h.shape[1:])

    __call__ = forward


def _gamma(n: int, dtype: torch.dtype) -> float:
    """gamma_n = n u / (1 - n u), u the unit roundoff of dtype: the relative error bound of n roundings."""
    u = torch.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def param_dtype(params: dict, x) -> torch.dtype:
    """The dtype a pass runs in: that of the parameters, else x's floating dtype, else torch's default."""
    for t in params.values():
        return t.dtype
    return x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else torch.get_default_dtype()


def check_input(x, dtype: torch.dtype) -> torch.Tensor:
    """Inputs (B, ...) as a floating tensor of the parameters' dtype; NaN -> ValueError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor (B, ...), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch axis and per-sample features, shape (B, ...), got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int64, torch.int32)):
        raise TypeError(f"x must be a real tensor, got {x.dtype}")
    if x.device.type == "meta":
        raise ValueError("x is a meta tensor (no values)")
    if x.shape[0] == 0:
        raise ValueError(f"x holds no samples (shape {tuple(x.shape)}); give at least one")
    x = x.to(dtype)
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    return x
