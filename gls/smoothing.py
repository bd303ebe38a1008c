"""Gaussian loss smoothing: PGPE (zeroth order) and RGS (first order) on a flat weight vector.

Both optimise ``L_sigma(theta) = E_z L(theta + sigma*z)`` (docs/design.md §5). They see the model only through
a *population loss*: a callable mapping perturbed weight vectors ``(P, d)`` to per-member losses
``(P,)``, evaluated in one batched pass (``gls.bounds`` bounds every member at once). Plain gradient
training is RGS with ``sigma = 0`` and one sample.

Noise is never stored: the population is written by ``gls.noise.perturb`` and PGPE's gradients are
reduced by ``gls.noise.noise_weighted_sum`` / ``noise_sigma_weighted_sum``, which regenerate the
counter-based Philox normals of step ``t`` from the key :func:`_noise_seed` ``(seed, t)``; beyond the
population itself nothing of size ``P * d`` exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from gls import noise

PopulationLoss = Callable[[torch.Tensor], torch.Tensor]
"""theta_pop (P, d) -> per-member losses (P,)."""

CENTER_OPTIMIZERS = ("clipup", "adam")


class NonFiniteCenterError(FloatingPointError):
    """The centre weights became NaN/inf; training cannot continue from this state."""


def _noise_seed(seed: int, step: int) -> int:
    """The 64-bit Philox key of step `step`: key words (lo, hi) = (step, seed)."""
    if not (0 <= int(seed) < 2 ** 32 and 0 <= int(step) < 2 ** 32):
        raise ValueError(f"seed and step must be 32-bit unsigned ints, got seed={seed}, step={step}")
    return (int(seed) << 32) | int(step)


def population_noise(d: int, n: int, seed: int, step: int, *, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normals (n, d) of members 0..n-1 (PGPE: pair indices) at `step`, materialised: what a step of
    PGPE or RGS with this `seed` perturbs by, for reproducing or checking it. The optimisers themselves
    use the fused ops, which produce the same numbers without storing them."""
    return noise.population_normal(n, d, seed=_noise_seed(seed, step), device=device).to(dtype)


def centered_ranks(fitness: torch.Tensor) -> torch.Tensor:
    """Centred ranks in [-0.5, 0.5] (higher fitness -> higher rank). Non-finite fitness ranks worst."""
    n = fitness.numel()
    if n < 2:
        raise ValueError("centred ranks need at least two fitness values")
    f = torch.where(torch.isfinite(fitness), fitness, torch.full_like(fitness, -math.inf))
    order = torch.argsort(f, stable=True)
    ranks = torch.empty(n, dtype=fitness.dtype, device=fitness.device)
    ranks[order] = torch.arange(n, dtype=fitness.dtype, device=fitness.device)
    return ranks / (n - 1) - 0.5


@dataclass
class StepStats:
    """What one update saw: population losses (finite members), non-finite count, sigma, gradient."""

    loss_mean: float
    loss_min: float
    loss_max: float
    nonfinite: int
    population: int
    sigma_mean: float
    sigma_min: float
    sigma_max: float
    grad_norm: float
    skipped: bool = False
    extra: dict = field(default_factory=dict)


def _loss_summary(losses: torch.Tensor) -> tuple[float, float, float, int]:
    ok = torch.isfinite(losses)
    bad = int((~ok).sum())
    if bad == losses.numel():
        return math.nan, math.nan, math.nan, bad
    f = losses[ok]
    return float(f.mean()), float(f.min()), float(f.max()), bad


def check_center(theta: torch.Tensor, step: int) -> None:
    """NonFiniteCenterError when the centre weights hold a NaN or an infinity after `step` (the optimisers
    call it after every update, so a diverged run stops at the step it diverged)."""
    if not bool(torch.isfinite(theta).all()):
        raise NonFiniteCenterError(f"the centre weights became non-finite at step {step}")


class PGPE:
    """PGPE with antithetic sampling, centred-rank fitness shaping and ClipUp or Adam centre steps.

    Maximises fitness ``-loss``. ``sigma`` is a per-weight stdev vector; its adaptation (gradient step
    of ``stdev_lr``, clipped to ``±stdev_max_change`` of its value per update) can be switched off so
    that sigma stays the fixed smoothing width.

    ``pair_chunk`` bounds memory: the population is evaluated ``pair_chunk`` antithetic pairs at a
    time (each chunk written by ``noise.perturb`` with a member offset), so at most
    ``2 * pair_chunk`` perturbed weight vectors exist at once and the step's memory is O(d) in the
    number of weights. ``None`` evaluates the whole population in one batched pass (fastest when it
    fits). The losses, and so the update, are the same either way.
    """

    def __init__(self, theta: torch.Tensor, *, sigma: float | torch.Tensor, lr: float, population: int,
                 seed: int, optimizer: str = "clipup", momentum: float = 0.9, max_speed: float | None = None,
                 adapt_sigma: bool = True, stdev_lr: float = 0.1, stdev_max_change: float = 0.2,
                 betas: tuple[float, float] = (0.9, 0.999), pair_chunk: int | None = None):
        if population < 2 or population % 2:
            raise ValueError(f"PGPE population must be an even number >= 2 (antithetic pairs), got {population}")
        if optimizer not in CENTER_OPTIMIZERS:
            raise ValueError(f"unknown PGPE centre optimizer {optimizer!r}; expected one of {CENTER_OPTIMIZERS}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if pair_chunk is not None and pair_chunk < 1:
            raise ValueError(f"pair_chunk must be a positive number of antithetic pairs, got {pair_chunk}")
        self.pair_chunk = pair_chunk
        self.theta = theta.detach().clone()
        self.sigma = torch.as_tensor(sigma, dtype=theta.dtype, device=theta.device).expand_as(self.theta).clone()
        if not bool(((self.sigma > 0) & torch.isfinite(self.sigma)).all()):
            raise ValueError(f"PGPE needs a finite sigma > 0, got values in [{float(self.sigma.min())}, {float(self.sigma.max())}]")
        self.population, self.seed, self.optimizer = population, int(seed), optimizer
        self.momentum, self.adapt_sigma = momentum, adapt_sigma
        self.stdev_lr, self.stdev_max_change = stdev_lr, stdev_max_change
        self.max_speed_ratio = 2.0 if max_speed is None else max_speed / lr
        self.betas = betas
        self.set_lr(lr)
        self.velocity = torch.zeros_like(self.theta)
        self.adam_m = torch.zeros_like(self.theta)
        self.adam_v = torch.zeros_like(self.theta)
        self.adam_t = 0

    def set_lr(self, lr: float) -> None:
        """Centre step size (ClipUp's max speed follows it at a fixed ratio)."""
        self.lr, self.max_speed = lr, self.max_speed_ratio * lr

    def population_of(self, step: int, first_pair: int = 0, pairs: int | None = None) -> torch.Tensor:
        """The weights of pairs first_pair.. (all by default) at `step`, (2 * pairs, d): mu + sigma*z_i
        in the first half, mu - sigma*z_i in the second."""
        pairs = self.population // 2 - first_pair if pairs is None else pairs
        return noise.perturb(self.theta, self.sigma, _noise_seed(self.seed, step), 2 * pairs,
                             member_offset=first_pair, antithetic=True)

    def losses(self, loss_fn: PopulationLoss, step: int) -> torch.Tensor:
        """Member losses (P,) at `step`, rows ordered as population_of(step), in chunks of pair_chunk pairs."""
        return self.pair_losses(loss_fn, step, 0, self.population // 2)

    def pair_losses(self, loss_fn: PopulationLoss, step: int, first: int, pairs: int) -> torch.Tensor:
        """Losses (2 * pairs,) of pairs first.. at `step`: their plus members, then their minus members
        (gls.distributed gives each rank such a slice)."""
        chunk = self.pair_chunk or max(pairs, 1)
        plus, minus = [], []
        for start in range(first, first + pairs, chunk):
            c = min(chunk, first + pairs - start)
            out = loss_fn(self.population_of(step, start, c)).detach()
            if out.shape != (2 * c,):
                raise ValueError(f"the population loss must have shape ({2 * c},), got {tuple(out.shape)}")
            plus.append(out[:c])
            minus.append(out[c:])
        return torch.cat(plus + minus)

    def gradients(self, losses: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_mu, g_sigma) of the fitness -losses at `step` (docs/design.md §5); the noise is regenerated.

        With rows p and p + n holding +z_i and -z_i, g_mu = sum_p f_p/(2n) sigma eps_p and
        g_sigma = sum_p (f_p - mean f)/(2n) ((sigma eps_p)^2 - sigma^2)/sigma, f the centred ranks.
        """
        n = self.population // 2
        ranks = centered_ranks(-losses.detach().to(self.theta.dtype))
        key, d = _noise_seed(self.seed, step), self.theta.numel()
        g_mu = noise.noise_weighted_sum(ranks / (2 * n), self.sigma, key, d, antithetic=True)
        g_sigma = noise.noise_sigma_weighted_sum((ranks - ranks.mean()) / (2 * n), self.sigma, key, d, antithetic=True)
        return g_mu, g_sigma

    def _center_step(self, g_mu: torch.Tensor) -> None:
        if self.optimizer == "clipup":
            norm = g_mu.norm()
            if norm > 0:
                self.velocity = self.momentum * self.velocity + self.lr * (g_mu / norm)
                speed = self.velocity.norm()
                if speed > self.max_speed:
                    self.velocity = self.velocity * (self.max_speed / speed)
            self.theta = self.theta + self.velocity
        else:  # Adam ascent on the fitness
            b1, b2 = self.betas
            self.adam_t += 1
            self.adam_m = b1 * self.adam_m + (1 - b1) * g_mu
            self.adam_v = b2 * self.adam_v + (1 - b2) * g_mu.square()
            m_hat = self.adam_m / (1 - b1 ** self.adam_t)
            v_hat = self.adam_v / (1 - b2 ** self.adam_t)
            self.theta = self.theta + self.lr * m_hat / (v_hat.sqrt() + 1e-8)

    def step(self, loss_fn: PopulationLoss, step: int) -> StepStats:
        """Evaluate the population of `step` with `loss_fn` (no autograd) and update mu and sigma."""
        with torch.no_grad():
            losses = self.losses(loss_fn, step)
            g_mu, g_sigma = self.gradients(losses, step)
            self._center_step(g_mu)
            if self.adapt_sigma:
                limit = self.stdev_max_change * self.sigma.abs()
                self.sigma = self.sigma + torch.clamp(self.stdev_lr * g_sigma, -limit, limit)
        check_center(self.theta, step)
        mean, lo, hi, bad = _loss_summary(losses)
        return StepStats(mean, lo, hi, bad, self.population, float(self.sigma.mean()), float(self.sigma.min()),
                         float(self.sigma.max()), float(g_mu.norm()))

    def state_dict(self) -> dict:
        return {"theta": self.theta, "sigma": self.sigma, "velocity": self.velocity, "adam_m": self.adam_m,
                "adam_v": self.adam_v, "adam_t": self.adam_t, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        for k in ("theta", "sigma", "velocity", "adam_m", "adam_v"):
            setattr(self, k, state[k].to(self.theta.device, self.theta.dtype).clone())
        self.adam_t = int(state["adam_t"])
        self.set_lr(float(state["lr"]))


class RGS:
    """Randomised gradient smoothing: ``g = mean_j grad L(theta + sigma*z_j)`` over N members evaluated
    in one population pass, then a step of any torch optimiser on theta, with optional norm clipping.

    ``sigma = 0, samples = 1`` is plain gradient training. Members whose loss or gradient is NaN/inf are
    left out of the mean and counted; if none is finite the step is skipped.
    """

    def __init__(self, theta: torch.Tensor, *, sigma: float, samples: int, seed: int,
                 optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
                 antithetic: bool = False, grad_clip: float | None = None, member_chunk: int | None = None):
        if samples < 1:
            raise ValueError(f"RGS needs at least one sample, got {samples}")
        if isinstance(sigma, (str, bool)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"RGS needs a finite sigma >= 0, got {sigma!r}")
        if antithetic and samples % 2:
            raise ValueError(f"antithetic RGS needs an even number of samples, got {samples}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {grad_clip}")
        if member_chunk is not None and member_chunk < 1:
            raise ValueError(f"member_chunk must be a positive number of samples, got {member_chunk}")
        self.member_chunk = member_chunk
        self.theta = torch.nn.Parameter(theta.detach().clone())
        self.sigma, self.samples, self.seed = float(sigma), samples, int(seed)
        self.antithetic, self.grad_clip = antithetic, grad_clip
        make = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.optimizer = make([self.theta])

    def population_of(self, step: int, first: int = 0, count: int | None = None) -> torch.Tensor:
        """The perturbed weights of `step` (no autograd): all N rows (N, d) by default; else the `count`
        members (antithetic: pairs, 2 * count rows) from `first` on, as gls.distributed splits them."""
        base = self.theta.detach()
        count = (self.samples // 2 if self.antithetic else self.samples) - first if count is None else count
        rows = 2 * count if self.antithetic else count
        if self.sigma == 0:
            return base.expand(rows, -1).clone()
        return noise.perturb(base, self.sigma, _noise_seed(self.seed, step), rows, member_offset=first,
                             antithetic=self.antithetic)

    def member_gradients(self, loss_fn: PopulationLoss, pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(member losses (M,), their gradients (M, d)) for the population rows `pop`; a member whose
        loss is NaN/inf gets a zero gradient row (it is left out later).

        Members go ``member_chunk`` at a time, and if `loss_fn` has ``parts`` (gls.objective's sample
        chunks) the backward pass runs piece by piece, so only one piece's graph is alive at a time;
        members are independent, so member chunks change each member's numbers only by the rounding of
        differently sized batched kernels."""
        m = self.member_chunk or pop.shape[0]
        parts = getattr(loss_fn, "parts", None)
        all_losses, grads = [], []
        for first in range(0, pop.shape[0], m):
            rows = pop[first:first + m].detach().requires_grad_(True)
            total = grad = None
            for piece in (parts(rows) if parts is not None else [loss_fn(rows)]):
                if piece.shape != (rows.shape[0],):
                    raise ValueError(f"the population loss must have shape ({rows.shape[0]},), got {tuple(piece.shape)}")
                ok = torch.isfinite(piece.detach())
                (g,) = torch.autograd.grad(torch.where(ok, piece, torch.zeros_like(piece)).sum(), rows,
                                           allow_unused=True)
                g = torch.zeros_like(rows) if g is None else g
                total = piece.detach() if total is None else total + piece.detach()
                grad = g if grad is None else grad + g
            all_losses.append(total)
            grads.append(grad.detach())
        return torch.cat(all_losses), torch.cat(grads)

    def finite_mean(self, losses: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean gradient over the members with finite loss and gradient, that mask)."""
        ok = torch.isfinite(losses) & torch.isfinite(grad).all(dim=1)
        count = int(ok.sum())
        g = grad[ok].sum(0) / count if count else torch.zeros_like(self.theta.detach())
        return g, ok

    def gradient(self, loss_fn: PopulationLoss, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(smoothed gradient (d,), member losses (N,), finite-member mask (N,)) at `step`."""
        losses, grad = self.member_gradients(loss_fn, self.population_of(step))
        g, ok = self.finite_mean(losses, grad)
        return g, losses, ok

    def step(self, loss_fn: PopulationLoss, step: int) -> StepStats:
        g, losses, ok = self.gradient(loss_fn, step)
        bad = int((~ok).sum())
        skipped = bad == self.samples
        norm = float(g.norm())
        if not skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.theta.grad = g.clone()
            if self.grad_clip is not None:
                norm = float(torch.nn.utils.clip_grad_norm_([self.theta], self.grad_clip))
            self.optimizer.step()
        check_center(self.theta.detach(), step)
        mean, lo, hi, _ = _loss_summary(torch.where(ok, losses, torch.full_like(losses, math.nan)))
        return StepStats(mean, lo, hi, bad, self.samples, self.sigma, self.sigma, self.sigma, norm, skipped)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"theta": self.theta.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_torch_optimizer(name: str, lr: float, **kwargs) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    """Factory for ``torch.optim.<name>`` (case-insensitive: adam, adamw, sgd, ...)."""
    lookup = {k.lower(): getattr(torch.optim, k) for k in dir(torch.optim)
              if isinstance(getattr(torch.optim, k), type) and issubclass(getattr(torch.optim, k), torch.optim.Optimizer)
              and k != "Optimizer"}
    cls = lookup.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(sorted(lookup))}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return lambda params: cls(params, lr=lr, **kwargs)
