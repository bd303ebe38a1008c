"""``python -m gls.train``: certified training by PGPE, RGS or plain gradients, with a run directory.

Without arguments it trains the default run (gls.app.config.DEFAULT_RUN): Gaussian Loss Smoothing by
RGS (4 samples, sigma 0.01) with the tight DeepPoly relaxation, on the paradox paper's CONV network at
width 8, real MNIST (10k training images), eps = 0.1, 4 epochs: 3-5 minutes on one core (the
README's measurement: 2 min 58 s). It then prints the test table and, beside it, plain-gradient
training at the same budget (gls.app.baseline: the committed ``quick`` paradox study, whose
RGS-DeepPoly cell is this run).

Run directory (``--out``): config.json (the resolved options), metrics.jsonl (one line per epoch),
last.pt / best.pt (atomic checkpoints; best = highest validation certified accuracy once eps has
reached its target), curves.png and summary.json (the final test table). last.pt is also written
inside an epoch every ``--checkpoint-every`` seconds, so a killed run loses at most that much.
``--resume RUN_DIR`` continues exactly, from an epoch end or from inside an epoch: the data order and
the noise are functions of (seed, epoch) and (seed, step), and the checkpoint holds the optimiser/PGPE
state, counters, buffers, the epoch's running sums and the data generator's state.

Before training, gls.memory plans the chunks of a step to fit ``--max-memory`` (or refuses at once),
and gls.app.timing times a few steps to print the run's expected duration; the progress display's ETA
follows the eps ramp.

BatchNorm networks: gls bounds BatchNorm in eval form with running statistics, so before each step
the running statistics are updated from the centre network on the clean mini-batch (train mode) and
every member is then bounded with them.

Several processes: ``torchrun --nproc-per-node N -m gls.train ...`` splits each step's population (or
batch) over the ranks and the evaluations over the examples (gls.distributed); rank 0 writes the run
directory, and ``--resume`` takes any number of ranks.

The run in named steps over a :class:`Run` and its typed config (gls.app.config.TrainConfig): setup,
resume (from a checkpoint), start (timing, config.json), then per epoch begin_epoch, train_epoch
(train_step per mini-batch), end_epoch (validation, metrics.jsonl) and save_epoch (checkpoints,
curves.png), and finally finish (the test evaluation, summary.json).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gls import distributed, memory
from gls.app import baseline, checkpoint, config, data, heap, models
from gls.app.certify import describe_checkpoint, evaluate, format_table
from gls.app.checkpoint import CheckpointError, load_weights
from gls.app.config import ConfigError, TrainConfig
from gls.app.plot import plot_curves
from gls.app.schedule import EpsSchedule, lr_factor
from gls.app.timing import RunClock, cost_fraction, format_duration, time_call
from gls.bounds import compute_bounds
from gls.net import Network
from gls.objective import population_loss
from gls.problem import certified
from gls.smoothing import PGPE, RGS, NonFiniteCenterError, StepStats, make_torch_optimizer

SUM_KEYS = ("loss", "nat", "cert", "grad_norm", "nat_loss", "rob_loss")  # an epoch's running sums
COUNT_KEYS = ("finite_steps", "nonfinite", "skipped", "cert_steps")  # and counts


def _epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of `epoch`: a function of (seed, epoch) alone, so a resumed run replays it."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2 ** 63)


def make_optimizer(cfg: TrainConfig, theta: torch.Tensor, plan: memory.StepPlan, world: distributed.World | None = None):
    """The PGPE or RGS optimiser of `cfg` with the member chunks of `plan`; under torchrun (an active
    `world`) the one that splits the step."""
    split = world is not None and world.active
    extra = {"world": world} if split else {}
    if cfg.method == "pgpe":
        pairs = plan.member_chunk // 2
        cls = distributed.DistributedPGPE if split else PGPE
        return cls(theta, sigma=cfg.sigma, lr=cfg.lr, population=cfg.population, seed=cfg.seed,
                   optimizer=cfg.optimizer, max_speed=cfg.max_speed, adapt_sigma=cfg.adapt_sigma,
                   stdev_lr=cfg.stdev_lr, stdev_max_change=cfg.stdev_max_change,
                   pair_chunk=pairs if pairs < cfg.population // 2 else None, **extra)
    clip = cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else None
    chunk = plan.member_chunk if plan.member_chunk < cfg.population else None
    cls = distributed.DistributedRGS if split else RGS
    return cls(theta, sigma=cfg.sigma, samples=cfg.population, seed=cfg.seed, antithetic=cfg.antithetic,
               optimizer=make_torch_optimizer(cfg.optimizer, cfg.lr), grad_clip=clip, member_chunk=chunk,
               **extra)


PLAN_IMAGES = 256  # training images whose IBP pass gives the planner its unstable counts


def _plan_memory(cfg: TrainConfig, shape: memory.NetShape, device: torch.device, model, train: data.Split,
                 say=print) -> tuple[memory.StepPlan, int]:
    """(chunks of a training step that fit the budget, the budget in bytes); MemoryPlanError if none does.
    The plan counts the IBP-unstable neurons of the first PLAN_IMAGES training images at the training eps
    (the most of any image: what a pass of any of them back-substitutes)."""
    budget = memory.parse_size(cfg.max_memory) if cfg.max_memory else memory.default_budget(device)
    given = 2 * cfg.pair_chunk if cfg.method == "pgpe" else cfg.member_chunk
    robust = cfg.train_eps > 0 and cfg.robust_weight > 0
    unstable = None
    if robust and len(train):
        unstable = memory.unstable_counts(model, train.x[:PLAN_IMAGES].to(device), cfg.train_eps)
        say(f"memory: IBP-unstable neurons per ReLU layer (the most of any of the first "
            f"{min(len(train), PLAN_IMAGES)} training images at eps {cfg.train_eps:g}): "
            f"{', '.join(map(str, unstable))} of {', '.join(map(str, shape.relu_widths))}", flush=True)
    plan = memory.plan_training(shape, method=cfg.method, relaxation=cfg.relaxation,
                                population=cfg.population, batch=cfg.batch_size, budget=budget,
                                member_chunk=given or None, sample_chunk=cfg.sample_chunk or None,
                                robust=robust, device=device, unstable=unstable)
    source = "--max-memory" if cfg.max_memory else \
        f"{100 * memory.SAFE_FRACTION.get(device.type, 0.7):.0f}% of the available {device.type.upper()} memory"
    if cfg.preset:
        say(f"preset {cfg.preset}: sized for {config.PRESET_MACHINES[cfg.preset]}", flush=True)
    say(f"memory: one step needs about {memory.gib(plan.bytes)} with {plan.member_chunk} of {cfg.population} "
        f"member(s) x {plan.sample_chunk} of {cfg.batch_size} sample(s) per pass "
        f"(budget {memory.gib(budget)}: {source})", flush=True)
    return plan, budget


def _has_bn(model) -> bool:
    """Whether `model` has BatchNorm layers (their running statistics are updated before each step)."""
    return any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())


def _update_bn_stats(model, theta, x) -> None:
    """Update the running statistics from the centre network `theta` on the clean batch `x`; every member
    is then bounded with them (gls bounds BatchNorm in eval form)."""
    load_weights(model, theta)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


REPORT_S = 30.0  # a validation, or an epoch without a progress bar, says how far it got this often


def validate(net: Network, split: data.Split, eps: float, relaxation: str, batch_size: int, backend,
             world: distributed.World, sub: int | None = None, budget: int | None = None, say=None) -> dict:
    """Centre network on the validation subset: natural and certified (training relaxation) accuracy at
    the target eps (each rank counts its shard); bounds `sub` samples at a time (gls.memory.cert_batch),
    each pass within `budget` bytes (gls.compute_bounds). `say` (print-like) hears every
    REPORT_S how many images are done (CNN7 DeepPoly: about 15 s per image on a CPU)."""
    nat = cert = done = 0
    sub = sub or batch_size
    shard = world.shard(split)
    last = time.monotonic()
    with torch.no_grad():
        for x, y in data.batches(shard, batch_size, shuffle=False):
            nat += int((net.forward(x)[0].argmax(-1) == y).sum())
            if eps > 0:
                for i in range(0, len(y), sub):
                    lower = compute_bounds(net, x[i:i + sub], eps, method=relaxation, labels=y[i:i + sub],
                                           backend=backend, budget=budget).lower[0]
                    cert += int(certified(lower).sum())
                    done += lower.shape[0]
                    if say is not None and time.monotonic() - last >= REPORT_S:
                        say(f"validation: {done} of {len(shard)} images bounded", flush=True)
                        last = time.monotonic()
    nat, cert = distributed.validate_counts(world, [nat, cert])
    n = max(len(split), 1)
    return {"val_natural_acc": nat / n, "val_certified_acc": cert / n if eps > 0 else nat / n, "val_samples": len(split)}


@dataclass
class Run:
    """What a training run holds from step to step: built by setup, restored by resume, advanced by
    train_epoch and end_epoch, closed by finish. Rank 0 alone writes the run directory and prints."""

    cfg: TrainConfig
    world: distributed.World
    out: Path
    device: torch.device
    train: data.Split
    val: data.Split
    test: data.Split
    val_label: str  # how the validation subset is named in the epoch lines
    model: torch.nn.Sequential
    net: Network
    plan: memory.StepPlan
    budget: int  # bytes a step (and an evaluation pass) may use
    val_sub: int  # samples bounded per validation pass
    opt: PGPE | RGS
    spe: int  # steps per epoch
    sched: EpsSchedule
    clock: RunClock | None = None
    history: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    epoch: int = 0  # epochs done
    step: int = 0  # steps done
    best: dict | None = None
    elapsed: float = 0.0  # training seconds of the finished epochs
    partial: dict | None = None  # the checkpoint's unfinished epoch, when resumed inside one
    last_save: float = 0.0  # time.monotonic() of the last checkpoint (start: when training starts)

    @property
    def center(self) -> torch.Tensor:
        return self.opt.theta.detach()

    @property
    def main(self) -> bool:
        return self.world.is_main

    def say(self, *args, **kwargs) -> None:
        if self.main:
            print(*args, **kwargs)

    def saved_config(self) -> dict:
        """The config as config.json and checkpoints hold it (with the launcher's world_size)."""
        return {**self.cfg.as_dict(), "world_size": self.world.size}

    def payload(self, epoch: int, part: dict | None = None) -> dict:
        """A checkpoint of the state after `epoch` epochs (plus the part `part` of the next one)."""
        return {"config": self.saved_config(), "epoch": epoch, "step": self.step, "best": self.best,
                "elapsed_s": self.elapsed + (part["epoch_time_s"] if part else 0.0),
                "theta": self.center.clone(), "optimizer": self.opt.state_dict(),
                "buffers": {n: b.detach().clone() for n, b in self.model.named_buffers()},
                "torch_rng": torch.get_rng_state(), "partial": part}

    def save(self, name: str, epoch: int, part: dict | None = None) -> None:
        """Write checkpoint `name` (last.pt, best.pt) of the state after `epoch` epochs (rank 0)."""
        if self.main:
            checkpoint.save(self.payload(epoch, part), self.out / name)
        self.last_save = time.monotonic()


def setup(cfg: TrainConfig, world: distributed.World, resuming: bool) -> Run:
    """A run's directory, data, network, memory plan, optimiser and schedule (the network at its
    initialisation or --init-from; a checkpoint is loaded into it by resume)."""
    out = Path(cfg.out or config.default_out(cfg))
    if not resuming and (out / checkpoint.LAST).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume {out} to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)
    device = torch.device(distributed.device_of(world, cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ds = data.load(cfg.dataset, cfg.data_dir)
    train, val, test = ds.train.subset(cfg.train_subset), ds.val.subset(cfg.val_subset), ds.test.subset(cfg.test_subset)
    model = models.build(cfg.net, ds.in_shape, ds.mean, ds.std, ds.num_classes, width=cfg.width,
                         init=cfg.init).to(device).eval()
    net = Network.from_module(model)
    theta0 = net.layout.flatten(net.params()).detach()[0].clone()
    if cfg.init_from and not resuming:
        theta0 = _init_from(cfg.init_from, model, theta0, device)
    shape = memory.NetShape.of(net, ds.in_shape)
    plan, budget = _plan_memory(cfg, shape, device, model, train, world.main_only(print))
    spe = data.num_batches(len(train), cfg.batch_size)
    val_label = f"val (first {len(val)} of {len(ds.val)} images)" if len(val) < len(ds.val) else f"val ({len(val)} images)"
    return Run(cfg, world, out, device, train, val, test, val_label, model, net, plan, budget,
               memory.cert_batch(shape, cfg.relaxation, cfg.eval_batch_size, budget, device),
               make_optimizer(cfg, theta0, plan, world), spe,
               EpsSchedule(cfg.train_eps, cfg.eps_start_epoch, cfg.eps_end_epoch, spe, cfg.eps_schedule))


def _init_from(path: str, model, theta0: torch.Tensor, device) -> torch.Tensor:
    """The weights (and buffers, into `model`) of checkpoint `path` (--init-from), checked against the network."""
    init = checkpoint.load(path)
    if init["theta"].shape != theta0.shape:
        raise ConfigError(f"--init-from {path}: its network has {init['theta'].numel()} weights, "
                          f"this one {theta0.numel()}")
    theta0 = init["theta"].to(device)
    load_weights(model, theta0, init.get("buffers"))
    return theta0


def resume(r: Run, payload: dict) -> None:
    """Continue from a checkpoint: the optimiser state, the centre and buffers, the counters, the
    unfinished epoch's part and the torch RNG, so the run goes on bit for bit."""
    r.opt.load_state_dict(payload["optimizer"])
    load_weights(r.model, r.center, payload.get("buffers"))
    r.epoch, r.step, r.best = payload["epoch"], payload["step"], payload["best"]
    r.elapsed = payload.get("elapsed_s", 0.0)
    r.partial = payload.get("partial")
    if r.partial is not None:  # elapsed_s of a checkpoint inside an epoch includes that epoch's part
        r.elapsed -= r.partial["epoch_time_s"]
    torch.set_rng_state(payload["torch_rng"])


def start(r: Run) -> None:
    """Time the run (estimate_time), write config.json and keep the metrics of the epochs done (a
    killed run's later lines are dropped)."""
    r.clock = estimate_time(r)
    r.history = _read_metrics(r.out / "metrics.jsonl", r.epoch)
    if r.main:
        checkpoint.write_json(r.out / "config.json", r.saved_config())
        with open(r.out / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in r.history)
    r.last_save = time.monotonic()  # --checkpoint-every counts from here


VAL_TIMING_S = 2.0  # a validation is timed on the first 1, 4, 16, ... images until one timing takes this long


def validation_seconds(r: Run) -> float:
    """Seconds of one validation, extrapolated from timing it on the first 1, 4, 16, ... validation images
    (at most one eval batch) until a timing takes VAL_TIMING_S: a whole batch of 256 CNN7 DeepPoly
    certificates took over an hour, unannounced. Under torchrun rank 0's timings decide for all ranks."""
    most = min(len(r.val), r.cfg.eval_batch_size)
    n = 1
    while True:
        vx = r.val.subset(min(n, most))
        t = time_call(lambda: validate(r.net, vx, r.cfg.eps, r.cfg.relaxation, r.cfg.eval_batch_size, r.cfg.backend,
                                       r.world, r.val_sub, r.budget))
        if r.world.active:
            t = r.world.broadcast_object(t, "the validation timing")
        if t >= VAL_TIMING_S or len(vx) >= most:
            return t * len(r.val) / max(len(vx), 1)
        n *= 4


def estimate_time(r: Run) -> RunClock:
    """Time one step at eps 0 and one at the training eps (two each when short) on a scratch optimiser (the
    run's state, its RNG and the model's buffers are left as they were) and a validation
    (validation_seconds); print the predicted total (gls.app.timing)."""
    cfg, world = r.cfg, r.world
    rng, buffers = torch.get_rng_state(), {n: b.detach().clone() for n, b in r.model.named_buffers()}
    opt = make_optimizer(cfg, r.center.clone(), r.plan, world)  # every rank times the same steps (collectives match)
    x, y = next(data.batches(r.train, cfg.batch_size, shuffle=False))
    x, y = opt.local_batch(x.to(r.device), y.to(r.device)) if world.active else (x.to(r.device), y.to(r.device))

    def step(eps: float, weight: float):
        fn = population_loss(r.net, x, y, eps=eps, relaxation=cfg.relaxation, robust_weight=weight,
                             backend=cfg.backend, sample_chunk=r.plan.sample_chunk, budget=r.budget)
        return time_call(lambda: opt.step(fn, 0))

    def timed(eps: float, weight: float) -> float:
        t = step(eps, weight)
        return min(t, step(eps, weight)) if t < 1.0 else t  # a short step is mostly warm-up: the faster of two

    r.say(f"time: timing a step at eps 0, one at eps {cfg.train_eps:g} and a validation", flush=True)
    t0 = timed(0.0, 0.0)
    t1 = timed(cfg.train_eps, cfg.robust_weight)
    r.say(f"time: a step takes {t0:.2f} s at eps 0 and {t1:.2f} s at eps {cfg.train_eps:g}; timing a validation",
          flush=True)
    val_s = validation_seconds(r)
    load_weights(r.model, r.center, buffers)
    torch.set_rng_state(rng)
    clock = RunClock(cost_fraction(r.sched, cfg.relaxation, cfg.robust_weight), t0, t1, cfg.epochs * r.spe,
                     r.spe, val_s)
    val = format_duration(val_s) if val_s >= 60 else f"{val_s:.1f} s"
    r.say(f"time: a validation ({len(r.val)} images) takes about {val}: {cfg.epochs} epochs x "
          f"{r.spe} steps take about {format_duration(clock.total())} (measured now, before the final evaluation)",
          flush=True)
    return clock


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    """The rows of metrics.jsonl up to epoch `upto_epoch` (a killed run may have written later ones)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["epoch"] <= upto_epoch]


def _resume_hint(out: Path) -> str:
    """What a killed or interrupted run left, and the command that continues it."""
    try:
        ck = checkpoint.load(out)
    except CheckpointError:
        return f"no checkpoint was written yet in {out} (the first comes after --checkpoint-every seconds)"
    where = f"epoch {ck['epoch'] + 1}, batch {ck['partial']['batch']}" if ck.get("partial") else f"end of epoch {ck['epoch']}"
    return f"resume from the checkpoint of step {ck['step']} ({where}) with --resume {out}"


@dataclass
class Epoch:
    """One epoch's running sums and counters; a checkpoint written inside the epoch holds them
    (partial) so that a resumed run finishes the epoch with the same numbers."""

    index: int
    generator: torch.Generator  # the data order, a function of (seed, epoch)
    t0: float = field(default_factory=time.perf_counter)
    done: int = 0  # batches trained before a resume inside this epoch
    time_before: float = 0.0  # seconds spent on them
    data_rng: torch.Tensor | None = None  # the generator's state after them (checked on resume)
    sums: dict = field(default_factory=lambda: dict.fromkeys(SUM_KEYS, 0.0))
    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    weight: float = 0.0  # robust weight of the last step
    stats: StepStats | None = None  # of the last step

    def seconds(self) -> float:
        """Seconds of this epoch so far (the part before a resume included)."""
        return self.time_before + time.perf_counter() - self.t0

    def add(self, stats: StepStats, record: dict, eps: float) -> None:
        """Count one step's statistics and training metrics."""
        self.stats = stats
        self.counts["nonfinite"] += stats.nonfinite
        self.counts["skipped"] += stats.skipped
        if math.isfinite(stats.loss_mean):
            self.counts["finite_steps"] += 1
            self.sums["loss"] += stats.loss_mean
            self.sums["grad_norm"] += stats.grad_norm
        self.sums["nat"] += float(record["natural_acc"].mean())
        self.sums["nat_loss"] += float(record["natural_loss"].nanmean())
        self.sums["rob_loss"] += float(record["robust_loss"].nanmean())
        cert = float(record["certified_acc"].nanmean()) if eps > 0 else float("nan")
        if math.isfinite(cert):
            self.sums["cert"] += cert
            self.counts["cert_steps"] += 1

    def partial(self, batch: int) -> dict:
        """What a checkpoint after `batch` batches of this epoch holds of it."""
        return {"batch": batch, "sums": dict(self.sums), "counts": dict(self.counts), "weight": self.weight,
                "stats": self.stats, "data_rng": self.generator.get_state(), "epoch_time_s": self.seconds()}


def begin_epoch(r: Run, index: int) -> Epoch:
    """Epoch `index`: its learning rate and data order, and the part already trained when resumed inside it."""
    ep = Epoch(index, torch.Generator().manual_seed(_epoch_seed(r.cfg.seed, index)))
    r.opt.set_lr(r.cfg.lr * lr_factor(index, r.cfg.lr_milestones, r.cfg.lr_decay))
    if r.partial is not None:
        p = r.partial
        ep.done, ep.time_before, ep.data_rng = p["batch"], p["epoch_time_s"], p["data_rng"]
        ep.sums, ep.counts, ep.weight, ep.stats = dict(p["sums"]), dict(p["counts"]), p["weight"], p["stats"]
    return ep


def train_step(r: Run, ep: Epoch, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimiser step on the mini-batch (x, y) (this rank's part under torchrun); returns its eps."""
    cfg = r.cfg
    x, y = x.to(r.device), y.to(r.device)
    x_rank, y_rank = r.opt.local_batch(x, y) if r.world.active else (x, y)
    eps = r.sched(r.step)
    ep.weight = cfg.robust_weight * r.sched.ramp_fraction(r.step)
    if _has_bn(r.model):
        _update_bn_stats(r.model, r.center, x)
    record: dict = {}
    loss_fn = population_loss(r.net, x_rank, y_rank, eps=eps, relaxation=cfg.relaxation, robust_weight=ep.weight,
                              backend=cfg.backend, record=record, sample_chunk=r.plan.sample_chunk, budget=r.budget)
    stats = r.opt.step(loss_fn, r.step)
    if r.world.active:
        record.update(r.opt.gather_record(record, r.step))
    r.step += 1
    if r.world.active and cfg.sync_check_every and r.step % cfg.sync_check_every == 0:
        r.world.check_same(r.opt.synced_state(), r.step)
    ep.add(stats, record, eps)
    return eps


def train_epoch(r: Run, ep: Epoch) -> None:
    """The steps of epoch `ep` (from where a resume left it), with the progress bar (without one, a line
    every REPORT_S) and a checkpoint every --checkpoint-every seconds; NonFiniteCenterError or
    KeyboardInterrupt stop it."""
    from tqdm import tqdm

    cfg = r.cfg
    show = _progress(cfg) and r.main
    bar = tqdm(total=r.spe, initial=ep.done, desc=f"epoch {ep.index + 1}/{cfg.epochs}", disable=not show, leave=False,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    step_t = said = time.perf_counter()
    try:
        for i, (x, y) in enumerate(data.batches(r.train, cfg.batch_size, shuffle=True, generator=ep.generator,
                                                augment=cfg.dataset == "cifar10")):
            if i < ep.done:  # resumed inside the epoch: the same order, these batches were trained
                if i + 1 == ep.done and not torch.equal(ep.generator.get_state(), ep.data_rng):
                    raise CheckpointError("the checkpoint's data order does not match this data set")
                continue
            eps = train_step(r, ep, x, y)
            now = time.perf_counter()
            r.clock.observe(r.step - 1, r.step, now - step_t)
            step_t = now
            bar.update(1)
            bar.set_postfix_str(f"loss {ep.stats.loss_mean:.3f}, train eps {eps:.3g}, run ETA "
                                f"{format_duration(r.clock.eta(r.step))}")
            if not show and now - said >= REPORT_S:  # no bar (stderr not a terminal): a line now and then
                r.say(f"epoch {ep.index + 1}/{cfg.epochs}: step {i + 1}/{r.spe}, loss {ep.stats.loss_mean:.3f}, "
                      f"train eps {eps:.3g}, run ETA {format_duration(r.clock.eta(r.step))}", flush=True)
                said = now
            if i + 1 < r.spe and time.monotonic() - r.last_save >= cfg.checkpoint_every:
                r.save(checkpoint.LAST, ep.index, ep.partial(i + 1))
    finally:
        bar.close()
    r.partial = None


def end_epoch(r: Run, ep: Epoch) -> dict:
    """The epoch's metrics row: training means, validation of the centre; appended to metrics.jsonl."""
    cfg, spe, sums, counts = r.cfg, r.spe, ep.sums, ep.counts
    load_weights(r.model, r.center)
    if _has_bn(r.model):
        r.model.eval()
    finite = max(counts["finite_steps"], 1)
    row = {"epoch": ep.index + 1, "step": r.step, "eps": r.sched(r.step - 1), "robust_weight": ep.weight,
           "lr": cfg.lr * lr_factor(ep.index, cfg.lr_milestones, cfg.lr_decay),
           "train_loss": sums["loss"] / finite, "train_natural_loss": sums["nat_loss"] / spe,
           "train_robust_loss": sums["rob_loss"] / spe, "train_natural_acc": sums["nat"] / spe,
           "train_certified_acc": sums["cert"] / counts["cert_steps"] if counts["cert_steps"] else None,
           "nonfinite_members": counts["nonfinite"], "skipped_steps": counts["skipped"],
           "sigma_mean": ep.stats.sigma_mean, "sigma_min": ep.stats.sigma_min, "sigma_max": ep.stats.sigma_max,
           "grad_norm": sums["grad_norm"] / finite}
    t_val = time.perf_counter()
    row.update(validate(r.net, r.val, cfg.eps, cfg.relaxation, cfg.eval_batch_size, cfg.backend, r.world, r.val_sub,
                        r.budget, say=r.say))
    r.clock.observe_validation(time.perf_counter() - t_val)
    row["val_eps"] = cfg.eps
    row["time_s"] = ep.seconds()
    r.elapsed += row["time_s"]
    row["elapsed_s"] = r.elapsed
    r.history.append(row)
    if r.main:
        with open(r.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def save_epoch(r: Run, row: dict) -> None:
    """Checkpoints after an epoch (best.pt when the validation improved once eps is at its target,
    last.pt always), curves.png and the epoch's line."""
    cfg, epoch = r.cfg, row["epoch"]
    if r.world.active:  # what is saved must be every rank's state
        r.world.check_same(r.opt.synced_state(), r.step)
    ramped = r.sched(r.step - 1) >= cfg.train_eps
    if ramped and (r.best is None or row["val_certified_acc"] > r.best["val_certified_acc"]):
        r.best = {"epoch": epoch, "val_certified_acc": row["val_certified_acc"], "val_natural_acc": row["val_natural_acc"]}
        r.save(checkpoint.BEST, epoch)
    r.save(checkpoint.LAST, epoch)
    if r.main:
        plot_curves(r.history, r.out / "curves.png", cfg, r.best["epoch"] if r.best else None)
    eta = f", run ETA {format_duration(r.clock.eta(r.step))}" if epoch < cfg.epochs else ""
    r.say(f"epoch {epoch}/{cfg.epochs}: train eps {row['eps']:.4g} loss {row['train_loss']:.4f}  |  "
          f"{r.val_label} at eps {cfg.eps:g}: natural {100 * row['val_natural_acc']:.2f}%  certified "
          f"({cfg.relaxation}) {100 * row['val_certified_acc']:.2f}%  |  nonfinite {row['nonfinite_members']}  "
          f"{row['time_s']:.1f} s{eta}", flush=True)


def _progress(cfg: TrainConfig) -> bool:
    """Whether to show progress bars: --progress, else when stderr is a terminal."""
    return sys.stderr.isatty() if cfg.progress is None else bool(cfg.progress)


def run(cfg: TrainConfig, resume_payload: dict | None = None) -> int:
    """Train with the resolved config `cfg` (on the ranks of torchrun's job, if any); returns the exit status."""
    world = distributed.init(cfg.device, cfg.dist_timeout)
    try:
        r = setup(cfg, world, resuming=resume_payload is not None)
        if resume_payload is not None:
            resume(r, resume_payload)
        start(r)
        return train_epochs(r)
    finally:
        world.close()


def train_epochs(r: Run) -> int:
    """The epochs left, then the final evaluation (finish); the exit status (130: interrupted, 3: diverged)."""
    for epoch in range(r.epoch, r.cfg.epochs):
        ep = begin_epoch(r, epoch)
        try:
            train_epoch(r, ep)
        except NonFiniteCenterError as e:
            last = r.out / checkpoint.LAST
            return finish(r, "diverged", f"training stopped: {e} (epoch {epoch + 1}); the last good checkpoint is "
                                         f"{last if last.exists() else 'none (no epoch finished)'}")
        except KeyboardInterrupt:
            r.say(f"gls.train: interrupted; {_resume_hint(r.out)}", file=sys.stderr)
            return 130
        save_epoch(r, end_epoch(r, ep))
        halt = r.cfg.halt_after_epoch
        if halt is not None and epoch + 1 >= halt and epoch + 1 < r.cfg.epochs:
            r.say(f"halted after epoch {epoch + 1} (--halt-after-epoch); continue with --resume {r.out}")
            return 0
    return finish(r, "finished")


def finish(r: Run, status: str, message: str | None = None) -> int:
    """summary.json; for a finished run, the test evaluation of best.pt (last.pt when eps never reached
    its target) and its table. Returns the exit status (3 for a diverged run)."""
    summary = {"status": status, "message": message, "epochs_done": len(r.history), "steps": r.step,
               "train_time_s": r.elapsed, "best": r.best, "run_dir": str(r.out), "world_size": r.world.size}
    if status == "diverged":
        if r.main:
            checkpoint.write_json(r.out / "summary.json", summary)
        r.say(f"gls.train: {message}", file=sys.stderr)
        return 3
    final_path, full, result, seconds = final_evaluation(r)
    summary.update({"evaluated_checkpoint": "best" if r.best is not None else "last", "test": result,
                    "eval_time_s": seconds})
    if r.main:
        checkpoint.write_json(r.out / "summary.json", summary)
        print(f"test evaluation of the {summary['evaluated_checkpoint']} {describe_checkpoint(final_path, full)}; "
              f"training {format_duration(r.elapsed)}, evaluation {format_duration(seconds)}:")
    r.say(format_table(result))
    r.say(baseline.table(r.cfg, result))
    r.say(f"run directory: {r.out}")
    return 0


def final_evaluation(r: Run) -> tuple[Path | None, dict | None, dict, float]:
    """The final checkpoint's test evaluation (gls.app.certify.evaluate, the ranks sharing the examples):
    (its path and payload on rank 0, the result, the seconds it took)."""
    cfg, world = r.cfg, r.world
    final = final_path = full = None
    if r.main:
        final_path = checkpoint.resolve(r.out, checkpoint.BEST if r.best is not None else checkpoint.LAST)
        final = full = checkpoint.load(final_path)
    if world.active:
        final = world.broadcast_object(final and {k: final[k] for k in ("theta", "buffers", "epoch")},
                                       "the final checkpoint broadcast")
    load_weights(r.model, final["theta"], final["buffers"])
    t0 = time.perf_counter()
    result = distributed.evaluate(world, evaluate, r.model, r.test, cfg.eps, methods=cfg.certify,
                                  batch_size=cfg.eval_batch_size, pgd_steps=cfg.pgd_steps,
                                  pgd_restarts=cfg.pgd_restarts, seed=cfg.seed, backend=cfg.backend,
                                  device=r.device, progress=_progress(cfg) and r.main, max_memory=r.budget)
    return final_path, full, result, time.perf_counter() - t0


def main(argv=None) -> int:
    """Entry point of ``python -m gls.train``; returns the exit status (errors: one line, non-zero)."""
    try:
        cli = config.parse_args(sys.argv[1:] if argv is None else argv)
        heap.keep_freed_memory()
        resume_payload = None
        if "resume" in cli:
            resume_payload = checkpoint.load(cli["resume"])
            cli.setdefault("out", str(checkpoint.resolve(cli["resume"]).parent))
            cfg = config.resolve(cli, saved=resume_payload["config"])
        else:
            cfg = config.resolve(cli)
        return run(cfg, resume_payload)
    except (ConfigError, CheckpointError, data.DataError, memory.MemoryPlanError) as e:
        print(f"gls.train: error: {e}", file=sys.stderr)
        return 2
    except distributed.DistributedError as e:
        print(f"gls.train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gls.train: interrupted; resume from the last checkpoint with --resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        if os.environ.get("GLS_DEBUG"):
            raise
        print(f"gls.train: error: {type(e).__name__}: {e} (set GLS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
