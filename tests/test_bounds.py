"""gls.compute_bounds: population = loop, soundness, naive oracle, sanity cases, gradients, errors."""
import itertools

import pytest
import torch
from torch import nn

import gls
from gls import ops
from tests.naive_bounds import naive_bounds
from tests.nets import NETS, build, population

METHODS = ["ibp", "hbox", "crown-ibp", "deeppoly"]
EPS = {"mlp": 0.08, "mlp_image": 0.08, "cnn": 0.05, "cnn_odd": 0.08, "cnn_window": 0.05}  # eps that leaves ReLUs unstable


def _inputs(shape, B=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(B, *shape, generator=gen)
    x.view(B, -1)[0, :2] = torch.tensor([0.0, 1.0])  # on the domain's edges: clipping is active
    return x


def _stacked(members, dtype=torch.float32):
    params, _ = torch.func.stack_module_state(members)
    return {n: t.detach().to(dtype) for n, t in params.items()}


def _members(params):
    P = next(iter(params.values())).shape[0]
    return [{n: t[p] for n, t in params.items()} for p in range(P)]


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", METHODS + ["crown"])
def test_population_equals_loop(net, method):
    model, shape = build(net)
    members = population(model, 3)
    x, labels = _inputs(shape), torch.tensor([0, 2, 1])
    got = gls.compute_bounds(model, x, EPS[net], method=method, labels=labels, params=_stacked(members), bound="both")
    K = 4 if net == "mlp_image" else 3
    assert got.lower.shape == got.upper.shape == (3, 3, K - 1)
    for p, member in enumerate(members):
        one = gls.compute_bounds(member, x, EPS[net], method=method, labels=labels, bound="both")
        torch.testing.assert_close(got.lower[p], one.lower[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.upper[p], one.upper[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("net", NETS + ["linear", "conv_linear"])
@pytest.mark.parametrize("method", METHODS)
def test_matches_naive_oracle(net, method):
    model, shape = build(net)
    model = model.double()
    params = _stacked(population(model, 2), torch.float64)
    x = _inputs(shape, B=2).double()
    eps = EPS.get(net, 0.1)
    C = torch.randn(2, 4, 3 if net != "mlp_image" else 4, dtype=torch.float64)
    got = gls.compute_bounds(model, x, eps, method=method, spec=C, params=params, bound="both")
    want_lo = naive_bounds(model, _members(params), x, eps, C, method)
    want_hi = -naive_bounds(model, _members(params), x, eps, -C, method)
    torch.testing.assert_close(got.lower, want_lo, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.upper, want_hi, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_without_ibp_intersection_matches_the_naive_oracle(net, method):
    """intersect_ibp=False: plain back-substituted bounds (CROWN for deeppoly), as the oracle computes them."""
    model, shape = build(net)
    model = model.double()
    params = _stacked(population(model, 2), torch.float64)
    x = _inputs(shape, B=2).double()
    eps = EPS.get(net, 0.1)
    C = torch.randn(2, 4, 3 if net != "mlp_image" else 4, dtype=torch.float64)
    got = gls.compute_bounds(model, x, eps, method=method, spec=C, params=params, intersect_ibp=False)
    want = naive_bounds(model, _members(params), x, eps, C, method, intersect=False)
    torch.testing.assert_close(got.lower, want, rtol=1e-5, atol=1e-7)


def _differs_from_plain_crown():
    """A net where intersecting with IBP flips a lower slope: deeppoly != plain CROWN (searched once)."""
    for seed in range(200):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(),
                              nn.Linear(6, 2)).double()
        x = torch.rand(1, 3, dtype=torch.float64)
        C = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
        a = naive_bounds(model, [dict(model.named_parameters())], x, 0.3, C, "deeppoly")
        b = naive_bounds(model, [dict(model.named_parameters())], x, 0.3, C, "deeppoly", intersect=False)
        if (a - b).abs().max() > 1e-6:
            return model, x, C, b
    raise AssertionError("no net found")


def test_plain_crown_differs_from_the_intersected_default_where_the_slope_flips():
    model, x, C, crown = _differs_from_plain_crown()
    got = gls.compute_bounds(model, x, 0.3, method="crown", spec=C, intersect_ibp=False).lower
    torch.testing.assert_close(got, crown, rtol=1e-7, atol=1e-9)
    assert (gls.compute_bounds(model, x, 0.3, method="crown", spec=C).lower - crown).abs().max() > 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sound", [False, True])
def test_float32_cancellation_cannot_make_a_relu_stable(method, sound):
    """x in [0, 1], h = relu(1e8 x), out = relu(h) - relu(h - 1): true range [0, 1]. In float32 IBP's
    mid - rad of h - 1 rounds to exactly 0, which made the neuron stable and the bounds [1, 1]."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        for m, w, b in ((model[0], [[1e8]], [0.0]), (model[2], [[1.0], [1.0]], [0.0, -1.0]), (model[4], [[1.0, -1.0]], [0.0])):
            m.weight.copy_(torch.tensor(w))
            m.bias.copy_(torch.tensor(b))
    x = torch.tensor([[0.5]])
    b = gls.compute_bounds(model, x, 0.5, method=method, bound="both", sound=sound)
    assert b.lower.dtype == torch.float32
    assert b.lower.item() <= 0.0 and b.upper.item() >= 1.0, (b.lower.item(), b.upper.item())
    assert -1.01e8 < b.lower.item() and b.upper.item() < 1.01e8  # sound, and no looser than plain IBP
    pts = torch.linspace(0, 1, 10001).unsqueeze(1).double()
    vals = model.double()(pts)
    assert vals.min() >= b.lower.item() and vals.max() <= b.upper.item()


def _region_points(lo, hi, n=10_000, gen=None):
    """All corners of a box of dimension <= 13, else 4,000 random corners; interior points up to n."""
    d = lo.numel()
    if d <= 13:
        corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=lo.dtype)
    else:
        corners = torch.randint(0, 2, (4000, d), generator=gen).to(lo.dtype)
    inner = torch.rand(max(n - len(corners), 0), d, generator=gen, dtype=lo.dtype)
    t = torch.cat([corners, inner])
    return lo + t * (hi - lo)


@pytest.mark.parametrize("net", NETS)
def test_sound_on_sampled_points(net):
    """No sampled point of any region leaves any method's bounds (tolerance 1e-9 in float64)."""
    model, shape = build(net)
    model = model.double()
    params = _stacked(population(model, 2), torch.float64)
    x = _inputs(shape, B=2).double()
    eps = EPS[net]
    C = torch.randn(2, 3, 3 if net != "mlp_image" else 4, dtype=torch.float64)
    bounds = {m: gls.compute_bounds(model, x, eps, method=m, spec=C, params=params, bound="both") for m in METHODS}
    netw = gls.Network.from_module(model)
    gen = torch.Generator().manual_seed(1)
    for i in range(x.shape[0]):
        flat = x[i].reshape(-1)
        pts = _region_points((flat - eps).clamp(min=0), (flat + eps).clamp(max=1), gen=gen)
        assert len(pts) >= 10_000
        vals = netw.forward(pts.reshape(-1, *shape), params) @ C[i].T  # (P, n, S)
        for m, b in bounds.items():
            assert (b.lower <= b.upper + 1e-12).all(), m
            assert (vals >= b.lower[:, i, None, :] - 1e-9).all(), m
            assert (vals <= b.upper[:, i, None, :] + 1e-9).all(), m


@pytest.mark.parametrize("net", NETS + ["linear"])
@pytest.mark.parametrize("method", METHODS)
def test_eps_zero_is_the_forward_pass(net, method):
    model, shape = build(net)
    x = _inputs(shape)
    b = gls.compute_bounds(model, x, 0.0, method=method, bound="both")
    want = model(x).unsqueeze(0)
    torch.testing.assert_close(b.lower, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.upper, want, rtol=1e-5, atol=1e-5)


def _affine_min(f, shape, lo, hi, C):
    """Exact min of C f over the box when f is affine on it: Jacobian at the centre, then the closed form."""
    x0 = ((lo + hi) / 2).reshape(shape)
    J = torch.autograd.functional.jacobian(lambda v: f(v.reshape(1, *shape))[0], x0).reshape(-1, x0.numel())
    A = C @ J
    c = C @ f(x0.unsqueeze(0))[0] - A @ x0.reshape(-1)
    return A.clamp(min=0) @ lo + A.clamp(max=0) @ hi + c


@pytest.mark.parametrize("net", ["linear", "conv_linear"])
@pytest.mark.parametrize("method", ["crown-ibp", "deeppoly", "crown"])
def test_exact_without_relu(net, method):
    model, shape = build(net)
    model = model.double()
    x = _inputs(shape, B=2).double()
    C = torch.randn(2, 4, 3, dtype=torch.float64)
    b = gls.compute_bounds(model, x, 0.2, method=method, spec=C)
    for i in range(2):
        flat = x[i].reshape(-1)
        want = _affine_min(model, x[i].shape, (flat - 0.2).clamp(min=0), (flat + 0.2).clamp(max=1), C[i])
        torch.testing.assert_close(b.lower[0, i], want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("net", [n for n in NETS if n != "cnn_window"])  # it has ReLUs within 1e-4 of 0
def test_exact_when_ibp_leaves_no_relu_unstable(net):
    model, shape = build(net)
    model = model.double()
    x = _inputs(shape, B=2).double().clamp(0.05, 0.95)  # off the domain's edge: a bias-free neuron fed by
    eps = 1e-4  # a pixel region [0, eps] has l = 0 exactly, which the rounding margin keeps unstable
    netw = gls.Network.from_module(model)
    params, P = netw.resolve_params(None)
    x_lo, x_hi = gls.bounds.input_region(x, eps, (0.0, 1.0))
    boxes, _ = gls.bounds.ibp_boxes(netw.plan(params, shape, torch.float64), x_lo, x_hi, P, None)
    assert all(((l >= 0) | (u <= 0)).all() for l, u in boxes), "precondition: eps too large for this test"
    C = torch.randn(2, 3, 3 if net != "mlp_image" else 4, dtype=torch.float64)
    got = {m: gls.compute_bounds(model, x, eps, method=m, spec=C).lower for m in ["hbox", "crown-ibp", "deeppoly"]}
    for i in range(2):
        flat = x[i].reshape(-1)
        want = _affine_min(model, x[i].shape, (flat - eps).clamp(min=0), (flat + eps).clamp(max=1), C[i])
        for m, lb in got.items():
            torch.testing.assert_close(lb[0, i], want, rtol=1e-10, atol=1e-10, msg=m)


@pytest.mark.parametrize("method", METHODS)
def test_domain_clipping(method):
    model, shape = build("mlp")
    x0 = torch.zeros(2, 4)
    clipped = gls.compute_bounds(model, x0, 0.1, method=method, bound="both")
    box = gls.compute_bounds(model, x0 + 0.05, 0.05, method=method, bound="both", domain=None)
    torch.testing.assert_close(clipped.lower, box.lower, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clipped.upper, box.upper, rtol=1e-5, atol=1e-6)
    loose = gls.compute_bounds(model, x0, 0.1, method=method, bound="both", domain=None)
    assert (loose.lower <= clipped.lower + 1e-6).all() and (loose.upper >= clipped.upper - 1e-6).all()


@pytest.mark.parametrize("net", ["mlp", "cnn", "mlp_image"])
@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_unstable_rows_only_equals_all_rows(net, method):
    model, shape = build(net)
    model = model.double()
    params = _stacked(population(model, 3), torch.float64)
    x = _inputs(shape).double()
    kw = dict(method=method, labels=torch.tensor([0, 1, 2]), params=params, bound="both")
    fast = gls.compute_bounds(model, x, EPS[net], **kw)
    full = gls.compute_bounds(model, x, EPS[net], rows="all", **kw)
    torch.testing.assert_close(fast.lower, full.lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.upper, full.upper, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_row_chunks_do_not_change_the_numbers(method):
    model, shape = build("cnn")
    x = _inputs(shape).double()
    model = model.double()
    kw = dict(method=method, labels=torch.tensor([0, 1, 2]), bound="both")
    whole = gls.compute_bounds(model, x, EPS["cnn"], **kw)
    chunked = gls.compute_bounds(model, x, EPS["cnn"], budget=20_000, **kw)  # a few rows per block (gls.budget)
    torch.testing.assert_close(chunked.lower, whole.lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked.upper, whole.upper, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["ibp", "deeppoly"])
def test_member_chunks_do_not_change_the_numbers(method):
    model, shape = build("cnn")
    model = model.double()
    params = _stacked(population(model, 5), torch.float64)
    x = _inputs(shape).double()
    kw = dict(method=method, labels=torch.tensor([0, 1, 2]), params=params, bound="both")
    whole = gls.compute_bounds(model, x, EPS["cnn"], member_chunk=5, **kw)
    chunked = gls.compute_bounds(model, x, EPS["cnn"], member_chunk=2, **kw)  # passes of 2, 2 and 1 members
    torch.testing.assert_close(chunked.lower, whole.lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked.upper, whole.upper, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="member_chunk"):
        gls.compute_bounds(model, x, EPS["cnn"], member_chunk=0, **kw)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", ["crown-ibp", "deeppoly"])
def test_final_member_blocks_do_not_change_the_numbers(monkeypatch, net, method):
    """The specification's back-substitution in blocks of members on a CPU without autograd
    (gls.bounds.FINAL_BLOCK; here one member a block against all in one) gives the same bounds, float64,
    and under autograd the pass is not split (its gradients are those of the whole pass)."""
    from gls import bounds

    model, shape = build(net)
    model = model.double()
    x = _inputs(shape).double()
    params = _stacked(population(model, 3), torch.float64)
    members = []  # members of each dense concretisation (the MLPs' final back-substitution ends in one)
    concretize = ops.concretize

    def counting(lam, *args, **kwargs):
        members.append(lam.shape[0])
        return concretize(lam, *args, **kwargs)

    def run(block, grad=False):
        members.clear()
        with monkeypatch.context() as m:
            m.setattr(bounds, "FINAL_BLOCK", block)
            m.setattr(ops, "concretize", counting)
            ps = {n: t.clone().requires_grad_(grad) for n, t in params.items()}
            return gls.compute_bounds(model, x, EPS[net], method=method, labels=torch.tensor([0, 1, 2]), params=ps,
                                      bound="both")

    dense = net.startswith("mlp")
    whole = run(1 << 40)
    assert 1 not in members or not dense
    blocked = run(1)
    assert members.count(1) == 3 or not dense
    torch.testing.assert_close(blocked.lower, whole.lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blocked.upper, whole.upper, rtol=1e-12, atol=1e-12)
    run(1, grad=True)
    assert 1 not in members


def test_tighter_methods_are_tighter_and_eps_is_per_sample():
    model, shape = build("mlp")
    x = _inputs(shape)
    lb = {m: gls.compute_bounds(model, x, 0.08, method=m, labels=torch.tensor([0, 1, 2])).lower for m in METHODS}
    assert (lb["deeppoly"] >= lb["crown-ibp"] - 1e-6).all()
    assert (lb["hbox"] >= lb["ibp"] - 1e-6).all()
    eps = torch.tensor([0.0, 0.05, 0.08])
    per = gls.compute_bounds(model, x, eps, method="deeppoly", labels=torch.tensor([0, 1, 2])).lower
    torch.testing.assert_close(per[:, 2], lb["deeppoly"][:, 2])
    torch.testing.assert_close(per[:, 0], gls.compute_bounds(model, x, 0.0, method="deeppoly", labels=torch.tensor([0, 1, 2])).lower[:, 0])


def _backends():
    out = [None]  # whatever gls.ops picks by default
    for name in ["reference", "cpp", "triton"]:
        try:
            for op in ["relu_relax", "backsub_linear_relu", "concretize", "ibp_affine"]:
                ops.resolve(op, torch.device("cpu"), name)
        except RuntimeError:
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("method", METHODS)
def test_same_numbers_on_every_backend(backend, method):
    model, shape = build("mlp")
    params = _stacked(population(model, 2))
    x = _inputs(shape, B=2)
    kw = dict(method=method, labels=torch.tensor([0, 2]), params=params, bound="both")
    got = gls.compute_bounds(model, x, 0.08, backend=backend, **kw)
    want = gls.compute_bounds(model, x, 0.08, backend="reference", **kw)
    torch.testing.assert_close(got.lower, want.lower, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.upper, want.upper, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_wrt_params(method):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    net = gls.Network.from_module(model)
    theta = net.layout.flatten(_stacked(population(model, 2), torch.float64)).requires_grad_(True)
    x = torch.tensor([[0.3, 0.6]], dtype=torch.float64)

    def f(th):
        return gls.compute_bounds(net, x, 0.3, method=method, labels=torch.tensor([1]),
                                  params=net.layout.unflatten(th), bound="both")

    b = f(theta)
    _, P = net.resolve_params(net.layout.unflatten(theta))
    boxes, _ = gls.bounds.ibp_boxes(net.plan(net.layout.unflatten(theta), (2,), torch.float64),
                              *gls.bounds.input_region(x, 0.3, (0, 1)), P, None)
    assert any(((l < 0) & (u > 0)).any() for l, u in boxes), "precondition: some ReLU is unstable"
    assert torch.autograd.gradcheck(lambda th: tuple(f(th)), (theta,))
    assert b.lower.requires_grad


@pytest.mark.parametrize("net", NETS + ["linear"])
@pytest.mark.parametrize("P,labels", [(1, [2]), (3, [0, 1, 2]), (3, [2, 0, 2, 2, 1, 0, 2])])
def test_ibp_margins_by_class_equal_the_spec_rows(monkeypatch, net, P, labels):
    """Without autograd, IBP with labels bounds the margins by label class (gls.bounds._ibp_margins, no
    concretize) where the last layer is a Linear; the same rows given as a spec go through C W and
    concretize (_ibp_output). Same bounds, float64, lower and both, one sample and repeated labels, one
    member and a population, a network without ReLU (its last layer's input shared by the members)."""
    model, shape = build(net)
    model = model.double()
    x = _inputs(shape, B=len(labels)).double()
    K = model.eval()(x).shape[-1]
    labels = torch.tensor(labels) % K
    params = _stacked(population(model, P), torch.float64)
    calls = []
    concretize = ops.concretize
    monkeypatch.setattr(ops, "concretize", lambda *a, **k: calls.append(1) or concretize(*a, **k))
    linear_last = isinstance(gls.Network.from_module(model).plan(params, shape, torch.float64)[-1][-1],
                             gls.affine.Dense)
    with torch.no_grad():
        for bound in ("lower", "both"):
            calls.clear()
            got = gls.compute_bounds(model, x, EPS.get(net, 0.1), method="ibp", params=params, bound=bound,
                                     labels=labels)
            assert not calls or not linear_last
            want = gls.compute_bounds(model, x, EPS.get(net, 0.1), method="ibp", params=params, bound=bound,
                                      spec=gls.margin_spec(labels, K).double())
            assert calls
            for g, w in zip(got, want):
                if w is None:
                    assert g is None
                else:
                    torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_gradient_reaches_the_model_parameters():
    model, shape = build("cnn")
    lb = gls.compute_bounds(model, _inputs(shape), 0.05, method="deeppoly", labels=torch.tensor([0, 1, 2])).lower
    gls.robust_loss(lb).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_margin_spec_and_robust_loss():
    labels = torch.tensor([2, 0])
    C = gls.margin_spec(labels, 4)
    z = torch.randn(2, 4)
    want = torch.stack([z[0, 2] - z[0, [0, 1, 3]], z[1, 0] - z[1, [1, 2, 3]]])
    torch.testing.assert_close((C @ z.unsqueeze(-1)).squeeze(-1), want)
    lb = torch.randn(3, 2, 3)
    logits = torch.cat([torch.zeros(3, 2, 1), -lb], -1)
    ce = nn.functional.cross_entropy(logits.reshape(6, 4), torch.zeros(6, dtype=torch.long), reduction="none").reshape(3, 2)
    torch.testing.assert_close(gls.robust_loss(lb, reduction="none"), ce)
    torch.testing.assert_close(gls.robust_loss(lb), ce.mean(1))
    with pytest.raises(ValueError, match="shape"):
        gls.robust_loss(lb[0])


def test_errors_name_the_problem():
    model, shape = build("mlp")
    x = _inputs(shape)
    with pytest.raises(ValueError, match=r"layer 1 \(Tanh\)"):
        gls.compute_bounds(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), x, 0.1, method="ibp")
    with pytest.raises(ValueError, match="last layer"):
        gls.Network.from_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    params = _stacked(population(model, 2))
    params["1.weight"] = params["1.weight"][:, :, :3]
    with pytest.raises(ValueError, match=r"params\['1.weight'\] must have shape \(P, 7, 4\)"):
        gls.compute_bounds(model, x, 0.1, method="ibp", params=params)
    with pytest.raises(ValueError, match="non-negative"):
        gls.compute_bounds(model, x, -0.1, method="ibp")
    with pytest.raises(ValueError, match="non-negative"):
        gls.compute_bounds(model, x, torch.tensor([0.1, -0.1, 0.0]), method="ibp")
    with pytest.raises(ValueError, match="x contains NaN"):
        gls.compute_bounds(model, torch.full_like(x, float("nan")), 0.1, method="ibp")
    bad = _stacked(population(model, 1))
    bad["3.bias"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"params contain NaN or inf: \['3.bias'\]"):
        gls.compute_bounds(model, x, 0.1, method="ibp", params=bad)
    with pytest.raises(ValueError, match=r"spec must have shape \(B, S, K\)"):
        gls.compute_bounds(model, x, 0.1, method="ibp", spec=torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="unknown method"):
        gls.compute_bounds(model, x, 0.1, method="zonotope")
    with pytest.raises(ValueError, match="labels or spec"):
        gls.compute_bounds(model, x, 0.1, method="ibp", labels=torch.tensor([0, 1, 2]), spec=torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        gls.compute_bounds(model, x, 0.1, method="ibp", labels=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="bound must be"):
        gls.compute_bounds(model, x, 0.1, method="ibp", bound="upper")
    with pytest.raises(ValueError, match="outside the domain"):
        gls.compute_bounds(model, x + 2, 0.1, method="ibp")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_integer_labels_of_any_width_give_the_same_margins(dtype):
    """uint8 labels used to index as a boolean mask (wrong margins when B equals the number of classes)."""
    model, shape = build("mlp")
    x = _inputs(shape)
    labels = torch.tensor([2, 0, 1])  # B = K = 3
    want = gls.compute_bounds(model, x, 0.05, method="crown-ibp", labels=labels).lower
    got = gls.compute_bounds(model, x, 0.05, method="crown-ibp", labels=labels.to(dtype)).lower
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gls.margin_spec(labels.to(dtype), 3), gls.margin_spec(labels, 3))


def test_bias_free_conv_before_affine_free_batchnorm_takes_a_population():
    """Conv2d(bias=False) + BatchNorm2d(affine=False): the folded bias is shared (1, C); P > 1 crashed."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2, affine=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8, 3)).eval()
    shape = (1, 4, 4)
    members = population(model, 3)
    x = _inputs(shape)
    for method in METHODS:
        got = gls.compute_bounds(model, x, 0.05, method=method, labels=torch.tensor([0, 1, 2]), params=_stacked(members))
        for p, member in enumerate(members):
            one = gls.compute_bounds(member, x, 0.05, method=method, labels=torch.tensor([0, 1, 2]))
            torch.testing.assert_close(got.lower[p], one.lower[0], rtol=1e-5, atol=1e-5)


def test_non_finite_inputs_are_refused():
    model, shape = build("mlp")
    x = _inputs(shape)
    bad = _stacked(population(model, 1))
    bad["1.weight"][0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"params contain NaN or inf: \['1.weight'\]"):
        gls.compute_bounds(model, x, 0.1, method="ibp", params=bad)
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        gls.compute_bounds(model, torch.full_like(x, float("inf")), 0.1, method="ibp", domain=None)
    with pytest.raises(ValueError, match="unbounded"):
        gls.compute_bounds(model, x, float("inf"), method="ibp", domain=None)
    with pytest.raises(ValueError, match="unbounded"):
        gls.compute_bounds(model, x, torch.tensor([0.1, float("inf"), 0.1]), method="deeppoly", domain=None)
    finite = gls.compute_bounds(model, x, float("inf"), method="ibp", bound="both")  # the whole domain
    assert torch.isfinite(finite.lower).all() and torch.isfinite(finite.upper).all()
    spec = torch.randn(3, 2, 3)
    spec[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="spec contains NaN or inf"):
        gls.compute_bounds(model, x, 0.1, method="ibp", spec=spec)
    model[4].running_var[0] = -1.0
    with pytest.raises(ValueError, match=r"layer 4 \(BatchNorm1d\): running statistics must be finite"):
        gls.compute_bounds(model, x, 0.1, method="ibp")


def test_obscure_inputs_get_clear_errors():
    model, shape = build("mlp")
    x = _inputs(shape)
    with pytest.raises(ValueError, match="holds no samples"):
        gls.compute_bounds(model, x[:0], 0.1, method="deeppoly", labels=torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be a 1-D integer tensor"):
        gls.compute_bounds(model, x, 0.1, method="ibp", labels=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="meta tensor"):
        gls.compute_bounds(model, x.to("meta"), 0.1, method="ibp")
    with pytest.raises(ValueError, match="meta tensor"):
        gls.compute_bounds(model.to("meta"), x, 0.1, method="ibp")
    model, _ = build("mlp")
    for domain in (1.0, (0.0, 0.5, 1.0), ("a", "b")):
        with pytest.raises(TypeError, match="domain must be None or a pair"):
            gls.compute_bounds(model, x, 0.1, method="ibp", domain=domain)
    with pytest.raises(TypeError, match="method must be one string"):
        gls.compute_bounds(model, x, 0.1, method=["ibp"])
    with pytest.raises(TypeError, match="float32 or float64"):
        gls.compute_bounds(model.half(), x, 0.1, method="ibp")


@pytest.mark.parametrize("net", NETS + ["linear", "conv_linear"])
@pytest.mark.parametrize("method", METHODS)
def test_sound_mode_encloses_the_float64_bounds_tightly(net, method):
    """sound=True (float32 in, float32 out): below the float64 lower bound (above the upper) of the same
    method, and within float32 rounding of it; members independent of member_chunk."""
    model, shape = build(net)
    params = _stacked(population(model, 3))
    x = _inputs(shape)
    eps = EPS.get(net, 0.1)
    C = torch.randn(3, 2, 4 if net == "mlp_image" else 3)
    for intersect in ((True, False) if method in ("hbox", "deeppoly") else (True,)):
        kw = dict(method=method, bound="both", intersect_ibp=intersect)
        s = gls.compute_bounds(model, x, eps, spec=C, params=params, sound=True, **kw)
        assert s.lower.dtype == torch.float32 and not s.lower.requires_grad
        ref = gls.compute_bounds(model.double(), x.double(), eps, spec=C.double(),
                                 params={n: t.double() for n, t in params.items()}, **kw)
        model.float()
        scale = ref.upper.abs().max() + ref.lower.abs().max()
        assert (s.lower.double() <= ref.lower).all() and (s.upper.double() >= ref.upper).all()
        assert (ref.lower - s.lower.double()).max() < 1e-5 * scale
        assert (s.upper.double() - ref.upper).max() < 1e-5 * scale
        chunked = gls.compute_bounds(model, x, eps, spec=C, params=params, sound=True, member_chunk=2, **kw)
        torch.testing.assert_close(chunked.lower, s.lower, rtol=0, atol=0)


def test_sound_mode_at_eps_zero_brackets_the_forward_pass():
    model, shape = build("cnn")
    x = _inputs(shape)
    want = model.double()(x.double())
    for method in METHODS:
        b = gls.compute_bounds(model.float(), x, 0.0, method=method, bound="both", sound=True)
        assert (b.lower[0].double() <= want).all() and (b.upper[0].double() >= want).all()
        assert (b.upper - b.lower).max() < 1e-5
