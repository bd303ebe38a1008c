"""gls.onnx_io: the exported graph computes the network (onnxruntime), reading it back gives the same
bounds, torch.onnx.export'ed stacks load and bound identically, and every unsupported op gets its error."""
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import gls
from gls.app import checkpoint, data, models
from gls.nn import Normalize
from gls.onnx_io import OnnxImportError, from_onnx, load_onnx, to_onnx
from tests import nets

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINED = Path(__file__).resolve().parent.parent / "bench" / "data" / "cnn3_mnist_ibp.pt"
METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly", "alpha-crown")


def _run(proto, x: torch.Tensor) -> torch.Tensor:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _mnist_models():
    trained, _ = checkpoint.model_from_checkpoint(torch.load(TRAINED, weights_only=False))
    torch.manual_seed(0)
    mean, std = data.STATS["mnist"]
    mlp = models.build("mlp", data.SHAPES["mnist"], mean, std).eval()
    return {"trained cnn3": trained, "random mlp": mlp}


def test_onnxruntime_logits_equal_torch_on_1000_test_images(tmp_path):
    x = data.load("mnist").test.x[:1000]
    for name, model in _mnist_models().items():
        proto = to_onnx(model, x.shape[1:], tmp_path / "model.onnx")
        with torch.no_grad():
            want = model(x)
        got = _run(onnx.load(tmp_path / "model.onnx"), x)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5, name
        assert proto.graph.node[0].op_type == "Sub"  # the normalisation is in the graph: pixel-space input


def _bounds(model, x, eps, y, method):
    return gls.compute_bounds(model, x, eps, method=method, labels=y, bound="both")


@pytest.mark.parametrize("name", nets.NETS + ["linear", "conv_linear"])
def test_from_onnx_of_to_onnx_bounds_identically(name):
    model, shape = nets.build(name)
    back = from_onnx(to_onnx(model, shape))
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    assert torch.equal(back(x), model(x))
    for method in METHODS:
        a, b = _bounds(model, x, 0.05, y, method), _bounds(back, x, 0.05, y, method)
        assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper), method


def test_the_trained_cnn3_round_trips_with_identical_bounds():
    model = _mnist_models()["trained cnn3"]
    x, y = data.load("mnist").test.x[:4], data.load("mnist").test.y[:4]
    back = from_onnx(to_onnx(model, x.shape[1:]))
    for method in METHODS:
        for sound in (False, True):
            a = gls.compute_bounds(model, x, 0.1, method=method, labels=y, sound=sound)
            b = gls.compute_bounds(back, x, 0.1, method=method, labels=y, sound=sound)
            assert torch.equal(a.lower, b.lower), (method, sound)


STACKS = {
    "mlp": (lambda: nn.Sequential(Normalize([0.5] * 6, [0.2] * 6), nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4)), (6,)),
    "bn_mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8),
                                     nn.ReLU(), nn.Linear(8, 3)), (3, 2, 2)),
    "cnn": (lambda: nn.Sequential(Normalize([0.4, 0.6], [0.3, 0.2]), nn.Conv2d(2, 4, 3, stride=2, padding=1),
                                  nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 2), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(27, 5)), (2, 7, 7)),
    "cnn_dilated": (lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=2, dilation=2, bias=False), nn.ReLU(),
                                          nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                          nn.Linear(18, 6), nn.ReLU(), nn.Linear(6, 2)), (1, 8, 8)),
}


@pytest.mark.parametrize("folding", [False, True])
@pytest.mark.parametrize("name", sorted(STACKS))
def test_torch_onnx_export_stacks_load_and_bound_identically(tmp_path, name, folding):
    """torch.onnx.export (the TorchScript exporter) of Linear/Conv/BN/Flatten/Normalize stacks. Without
    constant folding every layer comes back as itself: identical bounds. With it, torch folds BatchNorm
    into the convolution before writing, so the weights differ by rounding: bounds within 1e-5."""
    build, shape = STACKS[name]
    torch.manual_seed(3)
    model = build()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(tmp_path / "m.onnx"), dynamo=False, do_constant_folding=folding,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    loaded = load_onnx(tmp_path / "m.onnx")
    assert loaded.in_shape == shape
    back = loaded.model
    assert torch.allclose(back(x), model(x), atol=1e-6)
    y = model(x).argmax(1)
    for method in METHODS:
        a, b = _bounds(model, x, 0.03, y, method), _bounds(back, x, 0.03, y, method)
        if folding:
            assert torch.allclose(a.lower, b.lower, atol=1e-5) and torch.allclose(a.upper, b.upper, atol=1e-5), method
        else:
            assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper), method


# ---- hand-written graphs: the other supported forms and every refusal ---------------------------------

def _graph(nodes, inits, in_shape=(1, 4, 4), out=3, input_name="x"):
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), n)
             for n, v in inits.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["N", out])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _mlp_graph(extra=(), reshape=(0, -1)):
    """x * 2 - 1 (normalisation by Mul and Add), a Reshape flatten, MatMul + Add, Relu, Gemm with transB = 0."""
    gen = np.random.default_rng(0)
    nodes = [helper.make_node("Mul", ["x", "two"], ["a"], name="scale"),
             helper.make_node("Add", ["a", "minus_one"], ["b"], name="shift"),
             helper.make_node("Reshape", ["b", "shape"], ["c"], name="flat"),
             helper.make_node("MatMul", ["c", "W1"], ["d"], name="mm"),
             helper.make_node("Add", ["d", "b1"], ["e"], name="mm_bias"),
             helper.make_node("Relu", ["e"], ["f"], name="relu"),
             *extra,
             helper.make_node("Gemm", ["f", "W2", "b2"], ["y"], name="head", alpha=0.5, beta=2.0)]
    inits = {"two": np.array(2.0), "minus_one": np.array([-1.0]), "shape": np.array(reshape),
             "W1": gen.normal(size=(16, 6)) / 4, "b1": gen.normal(size=6), "W2": gen.normal(size=(6, 3)),
             "b2": gen.normal(size=3)}
    return _graph(nodes, inits)


def test_matmul_add_reshape_and_elementwise_constants_load():
    proto = _mlp_graph()
    model = from_onnx(proto)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Normalize", "Flatten", "Linear", "ReLU", "Linear"]
    x = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(x), _run(proto, x), atol=1e-5)
    y = model(x).argmax(1)
    for method in METHODS:  # bounds of the loaded network hold at the graph's own outputs
        lower = gls.compute_bounds(model, x, 0.0, method=method, labels=y).lower[0]
        margins = gls.margin_spec(y, 3) @ _run(proto, x).unsqueeze(-1)
        assert (lower <= margins.squeeze(-1) + 1e-4).all(), method


def _node(op, inputs, outputs=("h",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=f"bad_{op.lower()}", **attrs)


def _conv_graph(conv_attrs=None, after=None):
    gen = np.random.default_rng(1)
    nodes = [_node("Conv", ["x", "w"], ["h"], **(conv_attrs or {"kernel_shape": [3, 3]}))]
    if after is not None:
        nodes.append(after)
    nodes += [helper.make_node("Flatten", [nodes[-1].output[0]], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "W", "b"], ["y"], name="head", transB=1)]
    w = gen.normal(size=(4, 2 if (conv_attrs or {}).get("group") == 2 else 1, 3, 3))
    inits = {"w": w, "W": gen.normal(size=(3, 4 * (2 if (conv_attrs or {}).get("pads") else 4))),
             "b": gen.normal(size=3), "k": gen.normal(size=(1, 4, 1, 1))}
    return _graph(nodes, inits, in_shape=(2 if (conv_attrs or {}).get("group") == 2 else 1, 6, 6))


REFUSED = {
    "Sigmoid": (lambda: _conv_graph(after=_node("Sigmoid", ["h"], ["s"])), "unsupported ONNX op 'Sigmoid' at node bad_sigmoid"),
    "MaxPool": (lambda: _conv_graph(after=_node("MaxPool", ["h"], ["s"], kernel_shape=[2, 2])),
                "unsupported ONNX op 'MaxPool' at node bad_maxpool"),
    "Softmax": (lambda: _mlp_graph(extra=[_node("Softmax", ["f"], ["f2"])]), "unsupported ONNX op 'Softmax'"),
    "grouped Conv": (lambda: _conv_graph({"kernel_shape": [3, 3], "group": 2}), "node bad_conv (Conv): grouped"),
    "asymmetric pads": (lambda: _conv_graph({"kernel_shape": [3, 3], "pads": [1, 1, 0, 0]}), "node bad_conv (Conv): asymmetric pads"),
    "auto_pad": (lambda: _conv_graph({"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"}), "node bad_conv (Conv): auto_pad"),
    "Flatten axis 2": (lambda: _conv_graph(after=_node("Flatten", ["h"], ["s"], axis=2)), "node bad_flatten (Flatten): only Flatten(axis=1)"),
    "Reshape not a flatten": (lambda: _mlp_graph(reshape=(4, 4)), "node flat (Reshape): only a Reshape to (batch, -1)"),
    "Mul of two tensors": (lambda: _conv_graph(after=_node("Mul", ["h", "h"], ["s"])), "node bad_mul (Mul) does not continue the chain"),
    "Mul by a negative constant": (lambda: _conv_graph(after=_node("Mul", ["h", "k"], ["s"])), "a Normalize, which needs a finite positive scale"),
    "Sub from a constant": (lambda: _conv_graph(after=_node("Sub", ["k", "h"], ["s"])), "node bad_sub (Sub): elementwise Sub needs the data first"),
    "Gemm transA": (lambda: _mlp_graph(extra=[_node("Gemm", ["f", "W2"], ["f2"], transA=1)]), "node bad_gemm (Gemm): weight"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_unsupported_op_gets_its_clear_error(case):
    build, message = REFUSED[case]
    proto = build()
    with pytest.raises(OnnxImportError, match=re.escape(message)):
        from_onnx(proto)


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(OnnxImportError, match="no ONNX file at"):
        from_onnx(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(OnnxImportError, match="cannot read ONNX file"):
        from_onnx(tmp_path / "junk.onnx")
