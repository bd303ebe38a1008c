"""gls.alpha_crown: sound (sampling + PGD on the soundness fuzz's random networks, float32 and float64,
default and sound mode), never looser than DeepPoly, tighter where slopes can move, batched over the
population like separate runs, and wired into compute_bounds and gls.certify."""
import math

import pytest
import torch
from torch import nn

import gls
from gls.alpha_crown import alpha_crown_bounds
from gls.app import certify, data, models
from tests.naive_bounds import pgd, rounding_scale
from tests.test_soundness_fuzz import LIMITS, random_case

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = 12


def _violations(seed):
    """Largest violation / R per (dtype, mode) of alpha-crown's bounds, and whether any bound is looser than
    DeepPoly's of the same dtype and mode."""
    model, shape, P, eps, domain = random_case(seed)
    d_lo, d_hi = domain
    gen = torch.Generator().manual_seed(seed + 1)
    B, S = 2, 3
    x = d_lo + (d_hi - d_lo) * torch.rand(B, *shape, generator=gen)
    C = torch.randn(B, S, 3, generator=gen)
    base = {n: p.detach() for n, p in model.named_parameters()}
    params32 = {n: torch.stack([t * (1 + 0.1 * i) for i in range(P)]) for n, t in base.items()}
    net = gls.Network.from_module(model)
    worst, looser = {}, []
    for dtype in (torch.float32, torch.float64):
        params = {n: t.to(dtype) for n, t in params32.items()}
        xs, Cs = x.to(dtype), C.to(dtype)
        runs = {}
        for sound in (False, True):
            kw = dict(spec=Cs, params=params, bound="both", sound=sound, domain=domain)
            a = alpha_crown_bounds(net, xs, eps, **kw)
            d = gls.compute_bounds(net, xs, eps, method="deeppoly", **kw)
            if (a.lower < d.lower).any() or (a.upper > d.upper).any():
                looser.append((str(dtype), sound))
            runs[sound] = a
        ref = {n: t.double() for n, t in params.items()}
        for b in range(B):
            flat = xs[b].reshape(-1).double()
            lo, hi = (flat - eps).clamp(min=d_lo), (flat + eps).clamp(max=d_hi)
            N = lo.numel()
            pts = torch.cat([torch.randint(0, 2, (64, N), generator=gen).double(),
                             torch.rand(192, N, generator=gen, dtype=torch.float64)])
            pts = lo + pts * (hi - lo)
            for p in range(P):
                one = {n: t[p:p + 1] for n, t in ref.items()}
                R = (C[b].double().abs() @ rounding_scale(model, {n: t[p] for n, t in ref.items()}, lo, hi, shape))
                R = R.clamp(min=1e-300)

                def spec_values(z, rows=None):
                    out = net.forward(z.reshape(-1, *shape), one)[0] @ C[b].double().T
                    return out if rows is None else out.gather(1, rows.unsqueeze(1)).squeeze(1)

                vals = [spec_values(pts)]
                rows = torch.arange(S).repeat_interleave(4)
                for sign in (1.0, -1.0):
                    found = pgd(lambda z: spec_values(z, rows), lo.expand(len(rows), N).clone(),
                                    hi.expand(len(rows), N).clone(), sign)
                    vals.append(spec_values(found))
                vals = torch.cat(vals)
                vmin, vmax = vals.min(0).values, vals.max(0).values
                for sound, bd in runs.items():
                    v = torch.maximum(bd.lower[p, b].double() - vmin, vmax - bd.upper[p, b].double())
                    key = (str(dtype).split(".")[-1], "sound" if sound else "default")
                    worst[key] = max(worst.get(key, -math.inf), float((v / R).max()))
    return worst, looser


def test_fuzz_soundness_and_never_looser_than_deeppoly():
    bad, looser = [], []
    for seed in range(CASES):
        worst, loose = _violations(seed)
        bad += [(seed, k, v) for k, v in worst.items() if v > LIMITS[k]]
        looser += [(seed, *c) for c in loose]
    assert not bad, f"violations (seed, (dtype, mode), violation / R): {bad}"
    assert not looser, f"looser than DeepPoly (seed, dtype, sound): {looser}"


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


def test_optimised_slopes_tighten_deeppoly():
    """Slopes start at DeepPoly's 0 or 1 exactly; they must still move (torch 2.14's clamp gives no gradient
    there) and raise the bound, in default and in sound mode."""
    model = _mlp()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    for sound in (False, True):
        d = gls.compute_bounds(model, x, 0.1, method="deeppoly", labels=y, sound=sound).lower
        a = gls.compute_bounds(model, x, 0.1, method="alpha-crown", labels=y, sound=sound).lower
        assert (a >= d).all() and (a - d).mean() > 1e-3 * (d.abs().mean()), sound


def test_the_population_is_optimised_as_separate_runs():
    """Rows, samples and members are independent: one batched loop gives each member's own result."""
    model = _mlp(1)
    members = [{n: p.detach() * (1 + 0.05 * i) for n, p in model.named_parameters()} for i in range(3)]
    params = {n: torch.stack([m[n] for m in members]) for n in members[0]}
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    together = alpha_crown_bounds(model, x, 0.1, labels=y, params=params, patience=None).lower
    for i in range(3):
        alone = alpha_crown_bounds(model, x, 0.1, labels=y, params={n: t[i:i + 1] for n, t in params.items()},
                                   patience=None).lower
        assert torch.allclose(together[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_parameters_and_only_through_the_result():
    model = _mlp(2)
    params = {n: p.detach().unsqueeze(0).clone().requires_grad_() for n, p in model.named_parameters()}
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    lower = alpha_crown_bounds(model, x, 0.05, labels=model(x).argmax(1), params=params).lower
    assert all(p.grad is None for p in params.values())  # the optimisation left nothing behind
    lower.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())


def test_keywords_are_checked():
    model, x = _mlp(), torch.rand(1, 1, 4, 4)
    for kw, msg in (({"iterations": 0}, "iterations"), ({"lr": 0.0}, "lr"), ({"lr_decay": 1.5}, "lr_decay"),
                    ({"patience": 0}, "patience")):
        with pytest.raises(ValueError, match=msg):
            alpha_crown_bounds(model, x, 0.1, **kw)


def test_certify_counts_alpha_crown_in_the_best_column():
    torch.manual_seed(0)
    model = models.build("mlp", (1, 28, 28), (0.1307,), (0.3081,), width=8).eval()
    split = data.load("mnist").test.subset(24)
    res = certify.evaluate(model, split, 0.005, methods=("deeppoly", "alpha-crown"), batch_size=24, pgd_steps=2,
                           sound=True)
    acc = res["accuracy"]
    assert res["methods"] == ["deeppoly", "alpha-crown"]
    assert acc["deeppoly"] <= acc["alpha-crown"] <= acc["best"] <= acc["pgd"]
    assert "certified alpha-crown" in certify.format_table(res)
