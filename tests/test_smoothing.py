"""PGPE and RGS against their textbook definitions, on small analytic population losses."""
import math

import numpy as np
import pytest
import torch

from gls import smoothing
from gls.smoothing import PGPE, RGS, NonFiniteCenterError, population_noise, centered_ranks, make_torch_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


D = 7
A = torch.linspace(-1.0, 2.0, D, dtype=torch.float64)


def smooth_loss(pop: torch.Tensor) -> torch.Tensor:
    """A non-quadratic loss per member: (P, d) -> (P,)."""
    return ((pop - A).square().sum(1) + torch.sin(3 * pop).sum(1) * 0.3 + (pop[:, 0] * pop[:, -1]).tanh())


def test_noise_is_a_pure_function_of_seed_and_step():
    a = population_noise(5, 3, seed=1, step=4)
    assert torch.equal(a, population_noise(5, 3, seed=1, step=4))
    assert not torch.equal(a, population_noise(5, 3, seed=1, step=5))
    assert not torch.equal(a, population_noise(5, 3, seed=2, step=4))
    assert a.shape == (3, 5) and a.dtype == torch.float32


def test_centered_ranks_and_nonfinite_ranked_worst():
    f = torch.tensor([0.3, -1.0, 2.0, 0.0])
    assert torch.allclose(centered_ranks(f), torch.tensor([1 / 6, -0.5, 0.5, -1 / 6]))
    f = torch.tensor([0.3, math.nan, 2.0, -math.inf, -5.0, math.inf])
    r = centered_ranks(f)
    assert sorted(r[[1, 3, 5]].tolist()) == pytest.approx([-0.5, -0.3, -0.1])  # non-finite: the three worst
    assert r[2] == 0.5 and r.sum().abs() < 1e-6


def test_rgs_sigma0_is_plain_autograd():
    theta = torch.randn(D, dtype=torch.float64)
    rgs = RGS(theta, sigma=0.0, samples=1, seed=3)
    g, losses, ok = rgs.gradient(smooth_loss, step=0)
    t = theta.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(smooth_loss(t[None]).sum(), t)
    assert torch.equal(g, expected) and ok.all()
    assert torch.equal(losses, smooth_loss(theta[None]))


@pytest.mark.parametrize("antithetic", [False, True])
def test_rgs_is_mean_of_separate_gradients(antithetic):
    theta, sigma, n, step = torch.randn(D, dtype=torch.float64), 0.3, 6, 11
    rgs = RGS(theta, sigma=sigma, samples=n, seed=5, antithetic=antithetic)
    g, _, _ = rgs.gradient(smooth_loss, step)
    z = population_noise(D, n // 2 if antithetic else n, 5, step, dtype=torch.float64)
    if antithetic:
        z = torch.cat([z, -z])
    points = rgs.population_of(step)  # the fused perturbation: theta + sigma z, z regenerated
    torch.testing.assert_close(points, theta + sigma * z, rtol=1e-6, atol=1e-6)
    grads = []
    for j in range(n):
        t = points[j].clone().requires_grad_(True)
        grads.append(torch.autograd.grad(smooth_loss(t[None]).sum(), t)[0])
    assert torch.allclose(g, torch.stack(grads).mean(0), rtol=1e-12, atol=1e-12)


def test_rgs_step_uses_the_torch_optimizer_and_clipping():
    theta = torch.randn(D, dtype=torch.float64)
    rgs = RGS(theta, sigma=0.0, samples=1, seed=0, optimizer=make_torch_optimizer("sgd", lr=0.1), grad_clip=0.5)
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(smooth_loss(t[None]).sum(), t)
    stats = rgs.step(smooth_loss, 0)
    expected = theta - 0.1 * g * min(1.0, 0.5 / float(g.norm()))
    assert torch.allclose(rgs.theta.detach(), expected, atol=1e-6)
    assert stats.grad_norm == pytest.approx(float(g.norm()))


def test_rgs_nonfinite_members_are_dropped_and_counted():
    theta = torch.zeros(D, dtype=torch.float64)

    def loss(pop):  # member 1's own loss is NaN; the members are independent rows, as in the bounds
        bad = torch.zeros(len(pop), dtype=pop.dtype)
        bad[1] = math.nan
        return smooth_loss(pop) + bad

    rgs = RGS(theta, sigma=0.1, samples=4, seed=0)
    g, _, ok = rgs.gradient(loss, 0)
    assert ok.tolist() == [True, False, True, True] and torch.isfinite(g).all()
    stats = rgs.step(loss, 0)
    assert stats.nonfinite == 1 and not stats.skipped and math.isfinite(stats.loss_mean)
    stats = RGS(theta, sigma=0.0, samples=1, seed=0).step(lambda p: smooth_loss(p) * math.nan, 0)
    assert stats.skipped and stats.nonfinite == 1


def _textbook_pgpe(theta, sigma, losses, z, lr, velocity, momentum=0.9, max_speed=None,
                   stdev_lr=0.1, max_change=0.2):
    """PGPE by the formulas, one element at a time, in float64 numpy (Sehnke et al. / pgpelib)."""
    theta, sigma, z, losses = (np.asarray(a, dtype=np.float64) for a in (theta, sigma, z, losses))
    n, d = z.shape
    fit = -losses
    order = np.argsort(fit, kind="stable")
    ranks = np.empty(2 * n)
    for r, i in enumerate(order):
        ranks[i] = r / (2 * n - 1) - 0.5
    g_mu, g_sigma = np.zeros(d), np.zeros(d)
    for i in range(n):
        fp, fm = ranks[i], ranks[n + i]
        for k in range(d):
            eps = sigma[k] * z[i, k]
            g_mu[k] += 0.5 * (fp - fm) * eps / n
            g_sigma[k] += (0.5 * (fp + fm) - ranks.mean()) * (eps * eps - sigma[k] ** 2) / sigma[k] / n
    v = momentum * np.asarray(velocity, dtype=np.float64) + lr * g_mu / np.linalg.norm(g_mu)
    speed = np.linalg.norm(v)
    max_speed = 2 * lr if max_speed is None else max_speed
    if speed > max_speed:
        v = v * max_speed / speed
    new_sigma = sigma + np.clip(stdev_lr * g_sigma, -max_change * np.abs(sigma), max_change * np.abs(sigma))
    return theta + v, new_sigma, v


def test_pgpe_update_matches_textbook_formula():
    theta = torch.randn(D, dtype=torch.float64)
    sigma = torch.rand(D, dtype=torch.float64) * 0.2 + 0.05
    pgpe = PGPE(theta, sigma=sigma, lr=0.05, population=8, seed=9)
    velocity = np.zeros(D)
    for step in range(3):
        z = population_noise(D, 4, 9, step, dtype=torch.float64)
        pop = pgpe.population_of(step)
        torch.testing.assert_close(pop, torch.cat([pgpe.theta + pgpe.sigma * z, pgpe.theta - pgpe.sigma * z]),
                                   rtol=1e-6, atol=1e-6)
        losses = smooth_loss(pop)
        want_theta, want_sigma, velocity = _textbook_pgpe(pgpe.theta, pgpe.sigma, losses, z, 0.05, velocity)
        pgpe.step(smooth_loss, step)
        np.testing.assert_allclose(pgpe.theta.numpy(), want_theta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(pgpe.sigma.numpy(), want_sigma, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pair_chunk", [1, 3])
def test_pgpe_chunked_population_gives_the_same_update(pair_chunk):
    theta = torch.randn(D, dtype=torch.float64)
    whole = PGPE(theta, sigma=0.1, lr=0.05, population=10, seed=3)
    chunked = PGPE(theta, sigma=0.1, lr=0.05, population=10, seed=3, pair_chunk=pair_chunk)
    sizes = []

    def counting_loss(pop):
        sizes.append(len(pop))
        return smooth_loss(pop)

    for step in range(3):
        torch.testing.assert_close(chunked.losses(counting_loss, step), smooth_loss(whole.population_of(step)))
        whole.step(smooth_loss, step)
        chunked.step(counting_loss, step)
        torch.testing.assert_close(chunked.theta, whole.theta, rtol=0, atol=1e-12)
        torch.testing.assert_close(chunked.sigma, whole.sigma, rtol=0, atol=1e-12)
    assert max(sizes) == 2 * pair_chunk  # never more than pair_chunk pairs of weight vectors at once
    with pytest.raises(ValueError, match="pair_chunk"):
        PGPE(theta, sigma=0.1, lr=0.05, population=10, seed=3, pair_chunk=0)


def test_pgpe_stdev_clip_and_fixed_sigma():
    theta = torch.zeros(D, dtype=torch.float64)
    big = PGPE(theta, sigma=0.1, lr=0.01, population=16, seed=0, stdev_lr=1e6)
    big.step(smooth_loss, 0)
    change = (big.sigma / 0.1 - 1).abs()
    assert torch.all(change <= 0.2 + 1e-12) and torch.any(change > 0.19)
    fixed = PGPE(theta, sigma=0.1, lr=0.01, population=4, seed=0, adapt_sigma=False)
    fixed.step(smooth_loss, 0)
    assert torch.all(fixed.sigma == 0.1)


def test_pgpe_nonfinite_member_ranked_worst_and_counted():
    theta = torch.zeros(D, dtype=torch.float64)

    def loss(pop):
        out = smooth_loss(pop)
        return torch.where(torch.arange(len(pop)) == 2, torch.full_like(out, math.inf), out)

    pgpe = PGPE(theta, sigma=0.1, lr=0.01, population=6, seed=0)
    stats = pgpe.step(loss, 0)
    assert stats.nonfinite == 1 and math.isfinite(stats.loss_max) and torch.isfinite(pgpe.theta).all()
    ranks = centered_ranks(-loss(pgpe.population_of(1)))
    assert ranks[2] == -0.5


def test_nonfinite_center_raises():
    pgpe = PGPE(torch.zeros(3), sigma=0.1, lr=1e39, population=4, seed=0, optimizer="adam")
    with pytest.raises(NonFiniteCenterError, match="non-finite"):
        pgpe.step(lambda p: (p - 1).square().sum(1), 0)


def test_pgpe_adam_and_state_roundtrip():
    theta = torch.randn(D, dtype=torch.float64)
    a = PGPE(theta, sigma=0.1, lr=0.02, population=4, seed=1, optimizer="adam")
    b = PGPE(theta, sigma=0.1, lr=0.02, population=4, seed=1, optimizer="adam")
    for s in range(2):
        a.step(smooth_loss, s)
    b.load_state_dict(a.state_dict())
    a.step(smooth_loss, 2)
    b.step(smooth_loss, 2)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.sigma, b.sigma)


@pytest.mark.parametrize("method", ["pgpe", "rgs"])
def test_both_reduce_a_smoothed_loss(method):
    theta = torch.full((D,), 3.0, dtype=torch.float64)
    start = float(smooth_loss(theta[None]))
    if method == "pgpe":
        opt = PGPE(theta, sigma=0.3, lr=0.1, population=8, seed=0)
    else:
        opt = RGS(theta, sigma=0.3, samples=4, seed=0, optimizer=make_torch_optimizer("adam", lr=0.1))
    for s in range(150):
        opt.step(smooth_loss, s)
    end = float(smooth_loss(opt.theta.detach()[None]))
    assert end < 0.2 * start


def test_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        PGPE(torch.zeros(3), sigma=0.1, lr=0.1, population=3, seed=0)
    with pytest.raises(ValueError, match="optimizer"):
        PGPE(torch.zeros(3), sigma=0.1, lr=0.1, population=4, seed=0, optimizer="sgd")
    with pytest.raises(ValueError, match="sigma"):
        RGS(torch.zeros(3), sigma=-1.0, samples=1, seed=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_torch_optimizer("nope", lr=0.1)
    assert smoothing.CENTER_OPTIMIZERS == ("clipup", "adam")


@pytest.mark.parametrize("method", ["pgpe", "rgs"])
def test_both_reduce_the_robust_loss_of_a_tiny_network(method):
    """A 2-layer ReLU net on separable 2-class data: the DeepPoly robust loss drops by a clear margin."""
    from gls import nn as gnn
    from gls.net import Network
    from gls.objective import population_loss

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 6, generator=gen)
    y = (x[:, 0] > x[:, 1]).long()
    model = torch.nn.Sequential(gnn.Normalize(0.5, 0.25), torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 2))
    net = Network.from_module(model)
    theta = net.layout.flatten(net.params()).detach()[0]
    loss = population_loss(net, x, y, eps=0.02, relaxation="deeppoly", robust_weight=1.0)
    start = float(loss(theta[None]))
    if method == "pgpe":
        opt = PGPE(theta, sigma=0.05, lr=0.05, population=16, seed=0)
    else:
        opt = RGS(theta, sigma=0.05, samples=4, seed=0, optimizer=make_torch_optimizer("adam", lr=0.03))
    for s in range(80):
        opt.step(loss, s)
    end = float(loss(opt.theta.detach()[None]))
    assert end < 0.5 * start, (start, end)
