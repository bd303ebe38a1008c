"""ONNX in and out: a gls network as an ONNX graph, and the Sequential-shaped subset of ONNX as a gls network.

to_onnx writes the IR's layers one node each (opset 13): Normalize as Sub and Div by per-channel
constants, Linear as Gemm (transB = 1), Conv2d as Conv, BatchNorm as BatchNormalization (eval form),
Flatten as Flatten(axis = 1), ReLU as Relu. The input is in pixel space with a free batch axis, so the
graph is the function gls bounds.

from_onnx reads a chain (every node consumes the previous node's output and constants) of Gemm,
MatMul (+ Add of a bias), Conv, Relu, Flatten, Reshape to (batch, -1), BatchNormalization and
elementwise Sub/Div/Mul/Add with a constant, plus Constant and Identity nodes. Runs of elementwise
constant ops become one gls.nn.Normalize (per-channel or scalar constants, positive overall scale).
Anything else raises OnnxImportError naming the op and the node.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from gls.net import Network, conv_padding
from gls.nn import Normalize

OPSET = 13
_ELEMENTWISE = ("Sub", "Div", "Mul", "Add")
_SUPPORTED = ("Gemm", "MatMul", "Conv", "Relu", "Flatten", "Reshape", "BatchNormalization", *_ELEMENTWISE,
              "Constant", "Identity")


class OnnxImportError(ValueError):
    """An ONNX graph outside the subset gls reads; the message names the op and the node."""


def _onnx():
    try:
        import onnx
    except ImportError as e:  # a declared dependency (Makefile DEPS); say so rather than fail deep inside
        raise ImportError("gls's ONNX support needs the onnx package (pip install onnx onnxruntime)") from e
    return onnx


# ------------------------------------------------------------------------------------------ export
def to_onnx(model: nn.Sequential, in_shape, path: str | os.PathLike | None = None):
    """The network as an onnx.ModelProto (input 'input' (batch, *in_shape), output 'logits'), written to
    `path` when given. model: an nn.Sequential that gls reads (gls.Network.from_module)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    net = Network.from_module(model)
    shape = tuple(int(s) for s in in_shape)
    nodes, inits = [], []
    cur = "input"

    def const(name, t):
        inits.append(numpy_helper.from_array(np.asarray(t.detach().cpu().numpy(), dtype=np.float32), name))
        return name

    for i, layer in enumerate(net.layers):
        m, out, tag = layer.module, f"h{i}", f"{layer.kind}_{layer.position}"
        if layer.kind == "normalize":
            view = (1, -1) + (1,) * (len(shape) - 1)
            mid = f"{out}_centred"
            nodes.append(helper.make_node("Sub", [cur, const(f"{tag}.mean", m.mean.view(view))], [mid], name=f"{tag}_sub"))
            nodes.append(helper.make_node("Div", [mid, const(f"{tag}.std", m.std.view(view))], [out], name=f"{tag}_div"))
        elif layer.kind == "linear":
            ins = [cur, const(f"{tag}.weight", m.weight)] + ([const(f"{tag}.bias", m.bias)] if m.bias is not None else [])
            nodes.append(helper.make_node("Gemm", ins, [out], name=tag, transB=1))
            shape = (m.out_features,)
        elif layer.kind == "conv":
            pad = conv_padding(m)
            ins = [cur, const(f"{tag}.weight", m.weight)] + ([const(f"{tag}.bias", m.bias)] if m.bias is not None else [])
            nodes.append(helper.make_node("Conv", ins, [out], name=tag, kernel_shape=list(m.kernel_size),
                                          strides=list(m.stride), pads=[pad[0], pad[1], pad[0], pad[1]],
                                          dilations=list(m.dilation)))
            hw = [(shape[1 + j] + 2 * pad[j] - m.dilation[j] * (m.kernel_size[j] - 1) - 1) // m.stride[j] + 1 for j in range(2)]
            shape = (m.out_channels, *hw)
        elif layer.kind == "batchnorm":
            n = m.num_features
            w = m.weight if m.weight is not None else torch.ones(n)
            b = m.bias if m.bias is not None else torch.zeros(n)
            ins = [cur, const(f"{tag}.scale", w), const(f"{tag}.B", b), const(f"{tag}.mean", m.running_mean),
                   const(f"{tag}.var", m.running_var)]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], name=tag, epsilon=float(m.eps)))
        elif layer.kind == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out], name=tag))
        else:  # flatten
            nodes.append(helper.make_node("Flatten", [cur], [out], name=tag, axis=1))
            shape = (math.prod(shape),)
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["logits"], name="output"))
    graph = helper.make_graph(
        nodes, "gls_network",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", shape[0]])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gls")
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, str(path))
    return proto


# ------------------------------------------------------------------------------------------ import
class OnnxNetwork(NamedTuple):
    """What from_onnx reads: the network, the per-sample input shape and the graph's input/output names."""

    model: nn.Sequential
    in_shape: tuple[int, ...]
    input_name: str
    output_name: str


def from_onnx(path) -> nn.Sequential:
    """The network of an ONNX file (or ModelProto) as an nn.Sequential in eval mode, float32, that gls bounds
    and trains; see the module docstring for the subset. load_onnx also gives the input shape."""
    return load_onnx(path).model


def load_onnx(path) -> OnnxNetwork:
    """from_onnx with the per-sample input shape and the input/output names."""
    onnx = _onnx()
    from onnx import numpy_helper

    if isinstance(path, (str, os.PathLike)):
        if not os.path.isfile(path):
            raise OnnxImportError(f"no ONNX file at {path}")
        try:
            proto = onnx.load(str(path))
        except Exception as e:
            raise OnnxImportError(f"cannot read ONNX file {path}: {e}") from e
    else:
        proto = path
    g = proto.graph
    consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        raise OnnxImportError(f"gls reads graphs with one input and one output, got inputs "
                              f"{[i.name for i in inputs]} and outputs {[o.name for o in g.output]}")
    dims = inputs[0].type.tensor_type.shape.dim
    in_shape = tuple(d.dim_value for d in dims[1:])
    if not in_shape or any(d <= 0 for d in in_shape):
        raise OnnxImportError(f"input {inputs[0].name!r} needs a fixed per-sample shape after the batch axis, got "
                              f"{[d.dim_param or d.dim_value for d in dims]}")
    reader = _Reader(consts, in_shape)
    cur = inputs[0].name
    for i, node in enumerate(g.node):
        where = f"node {node.name or '#' + str(i)} ({node.op_type})"
        if node.op_type not in _SUPPORTED:
            raise OnnxImportError(f"unsupported ONNX op {node.op_type!r} at {where}; gls reads "
                                  f"{', '.join(_SUPPORTED)}")
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant(node, where)
            continue
        data = [x for x in node.input if x and x not in consts]
        if not data and node.op_type in ("Identity", "Reshape"):  # constant folding (an export without it)
            consts[node.output[0]] = _fold(node, consts)
            continue
        if data != [cur]:
            raise OnnxImportError(f"{where} does not continue the chain from {cur!r} (its inputs {list(node.input)}); "
                                  "gls reads Sequential-shaped graphs only")
        reader.add(node, where)
        cur = node.output[0]
    if cur != g.output[0].name:
        raise OnnxImportError(f"the chain ends at {cur!r}, not at the graph output {g.output[0].name!r}")
    model = reader.finish()
    return OnnxNetwork(model, in_shape, inputs[0].name, g.output[0].name)


def _constant(node, where):
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return torch.from_numpy(numpy_helper.to_array(a.t).copy())
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return torch.tensor(a.f if a.name == "value_float" else list(a.floats) if a.name == "value_floats"
                                else a.i if a.name == "value_int" else list(a.ints))
    raise OnnxImportError(f"{where}: only tensor or number Constant nodes are supported")


def _fold(node, consts):
    """Identity or Reshape of a constant."""
    t = consts[node.input[0]]
    if node.op_type == "Identity":
        return t
    shape = [int(v) for v in consts[node.input[1]].reshape(-1).tolist()]
    return t.reshape([t.shape[i] if v == 0 else v for i, v in enumerate(shape)])


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Reader:
    """Builds the Sequential node by node, tracking the per-sample shape; elementwise constant ops are
    collected as y = x * s + t and emitted as one Normalize when the next other op comes."""

    def __init__(self, consts: dict, in_shape):
        self.consts, self.shape, self.layers = consts, tuple(in_shape), []
        self.s = self.t = None
        self.pending = None  # MatMul waiting for its bias Add

    def add(self, node, where):
        op, a = node.op_type, _attrs(node)
        c = [self.consts[x] for x in node.input[(0 if op == "Add" else 1):] if x in self.consts]
        if op == "Add" and self.pending is not None and c and c[0].dim() <= 1 and c[0].numel() == self.pending.out_features:
            self.pending.bias = nn.Parameter(c[0].float().reshape(-1).clone())
            self.pending = None
            return
        self.pending = None
        if op in _ELEMENTWISE:
            return self._elementwise(op, node, where)
        self._flush(where)
        if op == "Identity":
            return
        if op == "Relu":
            self.layers.append(nn.ReLU())
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise OnnxImportError(f"{where}: only Flatten(axis=1) is supported, got axis={a['axis']}")
            self._flatten()
        elif op == "Reshape":
            target = [int(v) for v in self.consts[node.input[1]].reshape(-1).tolist()]
            n = math.prod(self.shape)
            if not (len(target) == 2 and target[0] in (-1, 0) and target[1] in (-1, n) and target != [-1, -1]):
                raise OnnxImportError(f"{where}: only a Reshape to (batch, -1) is supported (a flatten), got {target} "
                                      f"for per-sample shape {self.shape}")
            self._flatten()
        elif op in ("Gemm", "MatMul"):
            self._linear(op, node, a, c, where)
        elif op == "Conv":
            self._conv(node, a, c, where)
        else:  # BatchNormalization
            self._batchnorm(node, a, c, where)

    def _flatten(self):
        if len(self.shape) > 1:
            self.layers.append(nn.Flatten())
            self.shape = (math.prod(self.shape),)

    def _linear(self, op, node, a, c, where):
        if len(self.shape) != 1:
            raise OnnxImportError(f"{where} needs flat inputs, gets per-sample shape {self.shape} (add a Flatten)")
        W = c[0].float()
        if op == "MatMul" or not a.get("transB", 0):
            W = W.t()
        if a.get("transA", 0) or W.dim() != 2 or W.shape[1] != self.shape[0]:
            raise OnnxImportError(f"{where}: weight of shape {tuple(c[0].shape)} (transA={a.get('transA', 0)}) does "
                                  f"not map {self.shape[0]} features")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        lin = nn.Linear(W.shape[1], W.shape[0], bias=len(c) > 1)
        with torch.no_grad():
            lin.weight.copy_(alpha * W)
            if len(c) > 1:
                if c[1].numel() not in (1, W.shape[0]):
                    raise OnnxImportError(f"{where}: bias of shape {tuple(c[1].shape)} for {W.shape[0]} outputs")
                lin.bias.copy_(beta * c[1].float().reshape(-1).expand(W.shape[0]))
        if op == "MatMul":
            lin.bias = None
            self.pending = lin
        self.layers.append(lin)
        self.shape = (W.shape[0],)

    def _conv(self, node, a, c, where):
        W = c[0].float()
        if len(self.shape) != 3 or W.dim() != 4 or W.shape[1] != self.shape[0]:
            raise OnnxImportError(f"{where}: a 2-D convolution with weight {tuple(W.shape)} cannot take per-sample "
                                  f"shape {self.shape}")
        if a.get("group", 1) != 1:
            raise OnnxImportError(f"{where}: grouped convolutions (group={a['group']}) are not supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise OnnxImportError(f"{where}: auto_pad={a['auto_pad']!r} is not supported; give explicit pads")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise OnnxImportError(f"{where}: asymmetric pads {pads} are not supported")
        k = tuple(W.shape[-2:])
        stride, dil = tuple(a.get("strides", [1, 1])), tuple(a.get("dilations", [1, 1]))
        conv = nn.Conv2d(W.shape[1], W.shape[0], k, stride=stride, padding=tuple(pads[:2]), dilation=dil,
                         bias=len(c) > 1)
        with torch.no_grad():
            conv.weight.copy_(W)
            if len(c) > 1:
                conv.bias.copy_(c[1].float().reshape(-1))
        hw = [(self.shape[1 + j] + 2 * pads[j] - dil[j] * (k[j] - 1) - 1) // stride[j] + 1 for j in range(2)]
        if min(hw) < 1:
            raise OnnxImportError(f"{where}: input {self.shape} is smaller than the kernel")
        self.layers.append(conv)
        self.shape = (W.shape[0], *hw)

    def _batchnorm(self, node, a, c, where):
        if len(c) != 4:
            raise OnnxImportError(f"{where}: needs constant scale, B, mean and var")
        n = c[0].numel()
        if self.shape[0] != n or len(self.shape) not in (1, 3):
            raise OnnxImportError(f"{where}: {n} channels cannot follow per-sample shape {self.shape}")
        bn = (nn.BatchNorm2d if len(self.shape) == 3 else nn.BatchNorm1d)(n, eps=float(a.get("epsilon", 1e-5)))
        with torch.no_grad():
            bn.weight.copy_(c[0].float().reshape(-1))
            bn.bias.copy_(c[1].float().reshape(-1))
            bn.running_mean.copy_(c[2].float().reshape(-1))
            bn.running_var.copy_(c[3].float().reshape(-1))
        self.layers.append(bn.eval())

    def _elementwise(self, op, node, where):
        if node.input[0] not in self.consts and node.input[1] in self.consts:
            k = self.consts[node.input[1]]
        elif op in ("Mul", "Add") and node.input[0] in self.consts:
            k = self.consts[node.input[0]]
        else:
            raise OnnxImportError(f"{where}: elementwise {op} needs the data first and a constant second"
                                  if op in ("Sub", "Div") else f"{where}: elementwise {op} needs one constant operand")
        k = self._per_channel(k.double(), where)
        s = torch.ones_like(k) if self.s is None else self.s
        t = torch.zeros_like(k) if self.t is None else self.t
        if op == "Sub":
            t = t - k
        elif op == "Add":
            t = t + k
        elif op == "Mul":
            s, t = s * k, t * k
        else:
            s, t = s / k, t / k
        self.s, self.t = s, t

    def _per_channel(self, k, where):
        """A constant broadcast against (batch, *shape) as per-channel values (C,) or one value (1,)."""
        c = self.shape[0]
        full = (1,) * (1 + len(self.shape) - k.dim()) + tuple(k.shape) if k.dim() <= 1 + len(self.shape) else None
        if full is None or full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, c):
            raise OnnxImportError(f"{where}: constant of shape {tuple(k.shape)} is not per-channel for per-sample "
                                  f"shape {self.shape}")
        v = k.reshape(-1)
        return v if v.numel() == 1 else v.reshape(c)

    def _flush(self, where):
        if self.s is None:
            return
        s, t = self.s, self.t
        self.s = self.t = None
        if not (s > 0).all() or not torch.isfinite(s).all() or not torch.isfinite(t).all():
            raise OnnxImportError(f"elementwise constants before {where} give the scale {s.tolist()}: gls reads them as "
                                  "a Normalize, which needs a finite positive scale")
        self.layers.append(Normalize((-t / s).float(), (1 / s).float()))

    def finish(self) -> nn.Sequential:
        self._flush("the output")
        if not self.layers:
            raise OnnxImportError("the graph has no layers")
        model = nn.Sequential(*self.layers).eval()
        Network.from_module(model)  # gls's own checks (last layer affine, ...)
        return model


# ------------------------------------------------------------------------------------- benchmarks
def export_benchmark(model: nn.Sequential, x: torch.Tensor, labels: torch.Tensor, eps: float, out_dir,
                     *, domain=(0.0, 1.0), timeout: float = 300.0, prefix: str = "img") -> list[tuple[str, str, float]]:
    """A VNN-COMP benchmark in out_dir: model.onnx (to_onnx, pixel space), vnnlib/<prefix>_<i>.vnnlib per sample
    (robustness of labels[i] on gls.problem.input_region(x[i], eps, domain) computed in float64, the region
    gls certifies, written exactly) and instances.csv (onnx, vnnlib, timeout). Returns the csv's rows."""
    from gls.problem import input_region
    from gls.vnnlib import write_vnnlib

    out = os.fspath(out_dir)
    os.makedirs(os.path.join(out, "vnnlib"), exist_ok=True)
    x = x.detach().cpu()
    to_onnx(model, x.shape[1:], os.path.join(out, "model.onnx"))
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    with torch.no_grad():
        K = model(x[:1].to(dtype)).shape[-1]
    lo, hi = input_region(x.double(), eps, domain)
    rows = []
    for i in range(x.shape[0]):
        name = f"vnnlib/{prefix}_{i}.vnnlib"
        write_vnnlib(os.path.join(out, name), lo[i], hi[i], int(labels[i]), K)
        rows.append(("model.onnx", name, float(timeout)))
    with open(os.path.join(out, "instances.csv"), "w") as f:
        f.writelines(f"{a},{b},{t:g}\n" for a, b, t in rows)
    return rows
