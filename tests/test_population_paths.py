"""gls.population_paths: every path and pairing equals a per-member oracle (float64), on every sharing of the
population axis; compute_bounds with each path forced equals the naive oracle and the default choice
within 1e-6 relative, gradients included; the choice is visible (recording, DEBUG log); clear errors."""
import itertools
import logging

import pytest
import torch
import torch.nn.functional as F

import gls
from gls import population_paths as pp
from tests.naive_bounds import naive_bounds
from tests.nets import build, population

GEOMETRIES = [  # (C_in, C_out, k, stride, padding, dilation, H)
    (2, 3, 3, 1, 1, 1, 5),
    (3, 4, 4, 2, 1, 1, 8),
    (2, 2, 2, 1, 0, 2, 6),
]
SHARING = [(1, 4), (4, 4), (4, 1), (1, 1)]  # (members of the input, members of the weights)
RTOL = 1e-6


def _geometry(c_in, c_out, k, s, p, d, h):
    out = (h + 2 * p - d * (k - 1) - 1) // s + 1
    return pp.Geometry((s, s), (p, p), (d, d), (c_in, h, h), (c_out, out, out))


def _conv_oracle(x, w, b, geo):
    q = max(x.shape[0], w.shape[0])
    outs = []
    for j in range(q):
        xj, wj = x[j if x.shape[0] > 1 else 0], w[j if w.shape[0] > 1 else 0]
        bj = None if b is None else b[j if b.shape[0] > 1 else 0]
        outs.append(F.conv2d(xj.reshape(-1, *geo.in_shape), wj, bj, geo.stride, geo.padding, geo.dilation))
    return torch.stack(outs).flatten(2)


def _dense_oracle(x, w, b):
    q = max(x.shape[0], w.shape[0])
    return torch.stack([x[j if x.shape[0] > 1 else 0] @ w[j if w.shape[0] > 1 else 0].T
                        + (0 if b is None else b[j if b.shape[0] > 1 else 0]) for j in range(q)])


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * want.abs().max().item())


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("gx,gw", SHARING)
@pytest.mark.parametrize("with_b", [True, False])
def test_conv_paths_match_per_member_convolutions(geo, gx, gw, with_b):
    c_in, c_out, k = geo[:3]
    g = _geometry(*geo)
    x = torch.randn(gx, 3, c_in * geo[-1] ** 2, dtype=torch.float64)
    rad = torch.rand(gx, 3, c_in * geo[-1] ** 2, dtype=torch.float64)
    w = torch.randn(gw, c_out, c_in, k, k, dtype=torch.float64)
    b = torch.randn(gw, c_out, dtype=torch.float64) if with_b else None
    want_mid, want_rad = _conv_oracle(x, w, b, g), _conv_oracle(rad, w.abs(), None, g)
    paths = [p for p in pp.CONV_PATHS if pp.applicable(p, gx, gw, dense=False)]
    assert "grouped" in paths and "bmm" in paths and "loop" in paths
    for path, pairing in itertools.product(paths, pp.PAIRINGS):
        _close(pp.run(path, x, w, b, g), want_mid)
        mid_out, rad_out = pp.interval(path, pairing, x, rad, w, b, g)
        _close(mid_out, want_mid)
        _close(rad_out, want_rad)


@pytest.mark.parametrize("gx,gw", SHARING)
@pytest.mark.parametrize("with_b", [True, False])
def test_dense_paths_match_per_member_products(gx, gw, with_b):
    x = torch.randn(gx, 5, 7, dtype=torch.float64)
    rad = torch.rand(gx, 5, 7, dtype=torch.float64)
    w = torch.randn(gw, 6, 7, dtype=torch.float64)
    b = torch.randn(gw, 6, dtype=torch.float64) if with_b else None
    for path in [p for p in pp.DENSE_PATHS if p not in pp.FUSED and pp.applicable(p, gx, gw, dense=True)]:
        for pairing in pp.PAIRINGS:
            mid_out, rad_out = pp.interval(path, pairing, x, rad, w, b, None)
            _close(mid_out, _dense_oracle(x, w, b))
            _close(rad_out, _dense_oracle(rad, w.abs(), None))


def _params(model, P, dtype=torch.float64):
    params, _ = torch.func.stack_module_state(population(model, P))
    return {n: t.detach().to(dtype) for n, t in params.items()}


FORCED = [(p, q) for p in ("stacked", "grouped", "bmm", "loop") for q in pp.PAIRINGS] + [("op", "paired")]


def _expected_pairing(path, pairing, dense):
    return "paired" if dense and path in pp.FUSED else pairing


@pytest.mark.parametrize("net,eps", [("cnn", 0.05), ("cnn_odd", 0.08), ("cnn_window", 0.05), ("mlp", 0.08)])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "deeppoly"])
def test_forced_paths_give_the_same_bounds(net, eps, method):
    model, shape = build(net)
    model = model.double()
    params = _params(model, 3)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 2])
    C = gls.margin_spec(labels, 3)
    want = naive_bounds(model, [{n: t[p] for n, t in params.items()} for p in range(3)], x, eps, C, method)
    default = gls.compute_bounds(model, x, eps, method=method, labels=labels, params=params).lower
    _close(default, want)
    dense = net == "mlp"
    for path, pairing in FORCED:
        if not pp.applicable(path, 3, 3, dense) and path != "stacked":
            continue
        with pp.recording() as choices, pp.force(path, pairing):
            got = gls.compute_bounds(model, x, eps, method=method, labels=labels, params=params).lower
        want_pairing = _expected_pairing(path, pairing, dense)
        assert any(c.path == path and c.pairing == want_pairing for c in choices), (path, pairing, choices)
        _close(got, default)


def test_forced_paths_give_the_same_gradients():
    model, shape = build("cnn")
    model = model.double()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 2])
    base = _params(model, 3)

    def grads():
        params = {n: t.clone().requires_grad_(True) for n, t in base.items()}
        gls.robust_loss(gls.compute_bounds(model, x, 0.05, method="ibp", labels=labels, params=params).lower).sum().backward()
        return [params[n].grad for n in sorted(params)]

    want = grads()
    for path, pairing in FORCED[:-1]:
        with pp.force(path, pairing):
            for g, w in zip(grads(), want):
                _close(g, w)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("net", ["cnn", "mlp"])
def test_cache_blocks_give_the_same_bits(monkeypatch, net, method):
    """IBP's box step (in place, in cache-sized blocks: no autograd, CPU; with the boxes CROWN-IBP's
    relaxations need, or only the image IBP needs) and output fold give the same bits as in one piece,
    whatever the block sizes (here a few elements and a member), float32 and float64."""
    from gls import bounds

    for dtype in (torch.float32, torch.float64):
        model, shape = build(net)
        model = model.to(dtype)
        params = _params(model, 3, dtype)
        x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        labels = torch.tensor([0, 2])

        def lower():
            with torch.inference_mode():
                return gls.compute_bounds(model, x, 0.05, method=method, labels=labels, params=params).lower

        with monkeypatch.context() as m:  # one piece
            m.setattr(bounds, "BOX_BLOCK", 1 << 40)
            m.setattr(bounds, "IBP_OUTPUT_BLOCK", 1 << 40)
            whole = lower()
        with monkeypatch.context() as m:
            m.setattr(bounds, "BOX_BLOCK", 7)
            m.setattr(bounds, "IBP_OUTPUT_BLOCK", 1)
            assert torch.equal(lower(), whole)
            assert torch.equal(lower(), whole)  # the box step wrote over its own tensors, not the inputs'


def test_shared_weights_fold_into_the_batch():
    """Weights expanded from one member (stride 0) are shared: the folded path applies and agrees."""
    model, shape = build("cnn")
    model = model.double()
    params = _params(model, 3)
    conv = [n for n, t in params.items() if t.dim() == 5][-1]  # the one no BatchNorm is folded into
    for name in (conv, conv.replace("weight", "bias")):
        params[name] = params[name][:1].expand_as(params[name])
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 2])
    want = gls.compute_bounds(model, x, 0.05, method="ibp", labels=labels, params={n: t.contiguous() for n, t in params.items()}).lower
    for pairing in pp.PAIRINGS:
        with pp.recording() as choices, pp.force("folded", pairing):
            got = gls.compute_bounds(model, x, 0.05, method="ibp", labels=labels, params=params).lower
        assert any(c.path == "folded" for c in choices), choices
        _close(got, want)


def test_the_choice_is_visible(caplog):
    model, shape = build("cnn")
    x = torch.rand(2, *shape)
    with caplog.at_level(logging.DEBUG, logger="gls.population_paths"), pp.recording() as choices:
        gls.compute_bounds(model, x, 0.05, method="ibp", params=_params(model, 4, torch.float32))
    assert len(choices) == 3  # two convolutions, one Linear before the last
    assert choices[0].gx == 1 and choices[0].gw == 4 and choices[1].gx == 4
    for c in choices:
        assert (c.path, c.pairing) in pp.candidates(c.gx, c.gw, c.layer.startswith("linear"))
        if c.predicted:  # a fitted device type: the cheapest prediction wins
            assert c.predicted[(c.path, c.pairing)] == min(c.predicted.values())
    assert [r.getMessage() for r in caplog.records] == [str(c) for c in choices]


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown path 'diagonal'"):
        with pp.force("diagonal"):
            pass
    with pytest.raises(ValueError, match="unknown pairing"):
        with pp.force("loop", "both"):
            pass
    x, w = torch.randn(4, 2, 3), torch.randn(4, 5, 3)
    with pytest.raises(ValueError, match="path 'stacked' does not apply to inputs x4, weights x4"):
        pp.run("stacked", x, w, None, None)
    with pytest.raises(ValueError, match="population sizes do not match: inputs x3, weights x4"):
        pp.run("grouped", torch.randn(3, 2, 3), w, None, None)
