"""``python -m gls.train``: certified training by PGPE, RGS or plain gradients, with a run directory.

Without arguments it trains the default: real MNIST, the small MLP, plain-gradient IBP training at
eps = 0.1 (a few minutes on a 2-core CPU), then prints the evaluation table. Plain gradients with IBP
are the default because they are the one setting that reaches a high certified accuracy within that
budget on a CPU: IBP is the cheapest relaxation and gradient training needs one pass per step, where
PGPE needs a population of passes and tight relaxations cost several times more per pass.

Run directory (``--out``): config.json (the resolved options), metrics.jsonl (one line per epoch),
last.pt / best.pt (atomic checkpoints; best = highest validation certified accuracy once eps has
reached its target), curves.png and summary.json (the final test table). last.pt is also written
inside an epoch every ``--checkpoint-every`` seconds, so a killed run loses at most that much.
``--resume RUN_DIR`` continues exactly, from an epoch end or from inside an epoch: the data order and
the noise are functions of (seed, epoch) and (seed, step), and the checkpoint holds the optimiser/PGPE
state, counters, buffers, the epoch's running sums and the data generator's state.

Before training, gls.memory plans the chunks of a step to fit ``--max-memory`` (or refuses at once),
and gls.timing times a few steps to print the run's expected duration; the progress display's ETA
follows the eps ramp.

BatchNorm networks: gls bounds BatchNorm in eval form with running statistics, so before each step
the running statistics are updated from the centre network on the clean mini-batch (train mode) and
every member is then bounded with them.

Several processes: ``torchrun --nproc-per-node N -m gls.train ...`` splits each step's population (or
batch) over the ranks and the evaluations over the examples (gls.distributed); rank 0 writes the run
directory, and ``--resume`` takes any number of ranks.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from gls import distributed, memory
from gls.app import checkpoint, config, data, models
from gls.app.certify import describe_checkpoint, evaluate, format_table
from gls.app.models import load_weights
from gls.app.checkpoint import CheckpointError
from gls.app.config import ConfigError
from gls.net import Network
from gls.objective import population_loss
from gls.problem import certified
from gls.app.plot import plot_curves
from gls.app.schedule import EpsSchedule, lr_factor
from gls.smoothing import PGPE, RGS, NonFiniteCenterError, make_torch_optimizer
from gls.app.timing import RunClock, cost_fraction, format_duration, time_call


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2 ** 63)


def _make_optimizer(cfg: dict, theta: torch.Tensor, plan: memory.StepPlan, world: distributed.World | None = None):
    """The PGPE or RGS optimiser of `cfg` with the member chunks of `plan`; under torchrun (an active
    `world`) the one that splits the step."""
    split = world is not None and world.active
    extra = {"world": world} if split else {}
    if cfg["method"] == "pgpe":
        pairs = plan.member_chunk // 2
        cls = distributed.DistributedPGPE if split else PGPE
        return cls(theta, sigma=cfg["sigma"], lr=cfg["lr"], population=cfg["population"], seed=cfg["seed"],
                   optimizer=cfg["optimizer"], max_speed=cfg["max_speed"], adapt_sigma=cfg["adapt_sigma"],
                   stdev_lr=cfg["stdev_lr"], stdev_max_change=cfg["stdev_max_change"],
                   pair_chunk=pairs if pairs < cfg["population"] // 2 else None, **extra)
    clip = cfg["grad_clip"] if cfg["grad_clip"] and cfg["grad_clip"] > 0 else None
    chunk = plan.member_chunk if plan.member_chunk < cfg["population"] else None
    cls = distributed.DistributedRGS if split else RGS
    return cls(theta, sigma=cfg["sigma"], samples=cfg["population"], seed=cfg["seed"], antithetic=cfg["antithetic"],
               optimizer=make_torch_optimizer(cfg["optimizer"], cfg["lr"]), grad_clip=clip, member_chunk=chunk,
               **extra)


def _plan_memory(cfg: dict, shape: memory.NetShape, device: torch.device, say=print) -> tuple[memory.StepPlan, int]:
    """(chunks of a training step that fit the budget, the budget in bytes); MemoryPlanError if none does."""
    budget = memory.parse_size(cfg["max_memory"]) if cfg["max_memory"] else memory.default_budget(device)
    given = 2 * cfg["pair_chunk"] if cfg["method"] == "pgpe" else cfg["member_chunk"]
    plan = memory.plan_training(shape, method=cfg["method"], relaxation=cfg["relaxation"],
                                population=cfg["population"], batch=cfg["batch_size"], budget=budget,
                                member_chunk=given or None, sample_chunk=cfg["sample_chunk"] or None,
                                robust=cfg["train_eps"] > 0 and cfg["robust_weight"] > 0, device=device)
    source = "--max-memory" if cfg["max_memory"] else \
        f"{100 * memory.SAFE_FRACTION.get(device.type, 0.7):.0f}% of the available {device.type.upper()} memory"
    if cfg.get("preset"):
        say(f"preset {cfg['preset']}: sized for {config.PRESET_MACHINES[cfg['preset']]}", flush=True)
    say(f"memory: one step needs about {memory.gib(plan.bytes)} with {plan.member_chunk} of {cfg['population']} "
          f"member(s) x {plan.sample_chunk} of {cfg['batch_size']} sample(s) per pass "
          f"(budget {memory.gib(budget)}: {source})", flush=True)
    return plan, budget


def _center(opt) -> torch.Tensor:
    return opt.theta.detach()


def _has_bn(model) -> bool:
    return any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())


def _update_bn_stats(model, theta, x) -> None:
    load_weights(model, theta)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def _validate(net: Network, split: data.Split, eps: float, relaxation: str, batch_size: int, backend,
              world: distributed.World, sub: int | None = None) -> dict:
    """Centre network on the validation subset: natural and certified (training relaxation) accuracy at
    the target eps (each rank counts its shard); bounds `sub` samples at a time (gls.memory.cert_batch)."""
    from gls.bounds import compute_bounds

    nat = cert = 0
    sub = sub or batch_size
    with torch.no_grad():
        for x, y in data.batches(world.shard(split), batch_size, shuffle=False):
            nat += int((net.forward(x)[0].argmax(-1) == y).sum())
            if eps > 0:
                for i in range(0, len(y), sub):
                    lower = compute_bounds(net, x[i:i + sub], eps, method=relaxation, labels=y[i:i + sub],
                                           backend=backend).lower[0]
                    cert += int(certified(lower).sum())
    nat, cert = distributed.validate_counts(world, [nat, cert])
    n = max(len(split), 1)
    return {"val_natural_acc": nat / n, "val_certified_acc": cert / n if eps > 0 else nat / n, "val_samples": len(split)}


def _estimate_time(cfg, net, model, train, val, theta, sched, plan, spe, val_sub, device, world, say) -> RunClock:
    """Time one step at eps 0 and one at the training eps (two each when short) on a scratch optimiser (the
    run's state, its RNG and the model's buffers are left as they were) and one validation batch; print
    the predicted total (gls.timing)."""
    rng, buffers = torch.get_rng_state(), {n: b.detach().clone() for n, b in model.named_buffers()}
    opt = _make_optimizer(cfg, theta.clone(), plan, world)  # every rank times the same steps (collectives match)
    x, y = next(data.batches(train, cfg["batch_size"], shuffle=False))
    x, y = opt.local_batch(x.to(device), y.to(device)) if world.active else (x.to(device), y.to(device))

    def step(eps: float, weight: float):
        fn = population_loss(net, x, y, eps=eps, relaxation=cfg["relaxation"], robust_weight=weight,
                             backend=cfg["backend"], sample_chunk=plan.sample_chunk)
        return time_call(lambda: opt.step(fn, 0))

    def timed(eps: float, weight: float) -> float:
        t = step(eps, weight)
        return min(t, step(eps, weight)) if t < 1.0 else t  # a short step is mostly warm-up: the faster of two

    t0 = timed(0.0, 0.0)
    t1 = timed(cfg["train_eps"], cfg["robust_weight"])
    vx = val.subset(min(len(val), cfg["eval_batch_size"]))
    val_s = time_call(lambda: _validate(net, vx, cfg["eps"], cfg["relaxation"], cfg["eval_batch_size"],
                                        cfg["backend"], world, val_sub)) * len(val) / max(len(vx), 1)
    load_weights(model, theta, buffers)
    torch.set_rng_state(rng)
    clock = RunClock(cost_fraction(sched, cfg["relaxation"], cfg["robust_weight"]), t0, t1, cfg["epochs"] * spe,
                     spe, val_s)
    total = clock.total()
    say(f"time: a step takes {t0:.2f} s at eps 0 and {t1:.2f} s at eps {cfg['train_eps']:g}, a validation "
          f"{val_s:.1f} s: {cfg['epochs']} epochs x {spe} steps take about {format_duration(total)} "
          f"(measured now, before the final evaluation)", flush=True)
    return clock


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def _resume_hint(out: Path) -> str:
    """What a killed or interrupted run left, and the command that continues it."""
    try:
        ck = checkpoint.load(out)
    except CheckpointError:
        return f"no checkpoint was written yet in {out} (the first comes after --checkpoint-every seconds)"
    where = f"epoch {ck['epoch'] + 1}, batch {ck['partial']['batch']}" if ck.get("partial") else f"end of epoch {ck['epoch']}"
    return f"resume from the checkpoint of step {ck['step']} ({where}) with --resume {out}"


def _progress(cfg) -> bool:
    return sys.stderr.isatty() if cfg["progress"] is None else bool(cfg["progress"])


def run(cfg: dict, resume_payload: dict | None = None) -> int:
    """Train with the resolved config `cfg` (on the ranks of torchrun's job, if any); returns the exit status."""
    world = distributed.init(cfg["device"], cfg["dist_timeout"])
    try:
        return _run(cfg, resume_payload, world)
    finally:
        world.close()


def _run(cfg: dict, resume_payload: dict | None, world: distributed.World) -> int:
    from tqdm import tqdm

    main = world.is_main  # rank 0 alone writes the run directory and prints
    save, plot, say, write_json = (world.main_only(f) for f in (checkpoint.save, plot_curves, print, _write_json))
    cfg["world_size"] = world.size
    out = Path(cfg["out"] or config.default_out(cfg))
    if resume_payload is None and (out / checkpoint.LAST).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume {out} to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg["out"] = str(out)
    device = torch.device(distributed.device_of(world, cfg["device"]))
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])

    ds = data.load(cfg["dataset"], cfg["data_dir"])
    train, val, test = ds.train.subset(cfg["train_subset"]), ds.val.subset(cfg["val_subset"]), ds.test.subset(cfg["test_subset"])
    model = models.build(cfg["net"], ds.in_shape, ds.mean, ds.std, ds.num_classes, width=cfg["width"],
                         init=cfg.get("init", "default")).to(device).eval()
    net = Network.from_module(model)
    theta0 = net.layout.flatten(net.params()).detach()[0].clone()
    if cfg["init_from"] and resume_payload is None:
        init = checkpoint.load(cfg["init_from"])
        if init["theta"].shape != theta0.shape:
            raise ConfigError(f"--init-from {cfg['init_from']}: its network has {init['theta'].numel()} weights, "
                              f"this one {theta0.numel()}")
        theta0 = init["theta"].to(device)
        load_weights(model, theta0, init.get("buffers"))
    shape = memory.NetShape.of(net, ds.in_shape)
    plan, budget = _plan_memory(cfg, shape, device, say)
    val_sub = memory.cert_batch(shape, cfg["relaxation"], cfg["eval_batch_size"], budget, device)
    opt = _make_optimizer(cfg, theta0, plan, world)
    spe = data.num_batches(len(train), cfg["batch_size"])
    sched = EpsSchedule(cfg["train_eps"], cfg["eps_start_epoch"], cfg["eps_end_epoch"], spe, cfg["eps_schedule"])

    epoch, step, best, elapsed, partial = 0, 0, None, 0.0, None
    if resume_payload is not None:
        opt.load_state_dict(resume_payload["optimizer"])
        load_weights(model, _center(opt), resume_payload.get("buffers"))
        epoch, step, best = resume_payload["epoch"], resume_payload["step"], resume_payload["best"]
        elapsed = resume_payload.get("elapsed_s", 0.0)
        partial = resume_payload.get("partial")
        if partial is not None:  # elapsed_s of a checkpoint inside an epoch includes that epoch's part
            elapsed -= partial["epoch_time_s"]
        torch.set_rng_state(resume_payload["torch_rng"])
    clock = _estimate_time(cfg, net, model, train, val, _center(opt), sched, plan, spe, val_sub, device, world, say)
    history = _read_metrics(out / "metrics.jsonl", epoch)
    write_json(out / "config.json", cfg)
    if main:
        with open(out / "metrics.jsonl", "w") as f:  # drop epochs after the checkpoint (a killed run's tail)
            f.writelines(json.dumps(h) + "\n" for h in history)

    def payload(ep: int, part: dict | None = None) -> dict:
        return {"config": cfg, "epoch": ep, "step": step, "best": best, "elapsed_s": elapsed + (
                    part["epoch_time_s"] if part else 0.0),
                "theta": _center(opt).clone(), "optimizer": opt.state_dict(),
                "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
                "torch_rng": torch.get_rng_state(), "partial": part}

    show = _progress(cfg) and main
    check_every = cfg["sync_check_every"]
    bn = _has_bn(model)
    status, message = "finished", None
    val_label = f"val (first {len(val)} of {len(ds.val)} images)" if len(val) < len(ds.val) else f"val ({len(val)} images)"
    last_save = time.monotonic()
    for epoch in range(epoch, cfg["epochs"]):
        t0 = time.perf_counter()
        opt.set_lr(cfg["lr"] * lr_factor(epoch, cfg["lr_milestones"], cfg["lr_decay"]))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg["seed"], epoch))
        sums = {"loss": 0.0, "nat": 0.0, "cert": 0.0, "grad_norm": 0.0, "nat_loss": 0.0, "rob_loss": 0.0}
        counts = {"finite_steps": 0, "nonfinite": 0, "skipped": 0, "cert_steps": 0}
        done, epoch_time = 0, 0.0  # batches of this epoch already trained (resumed from inside the epoch)
        if partial is not None:
            done, epoch_time = partial["batch"], partial["epoch_time_s"]
            sums, counts, weight, stats = dict(partial["sums"]), dict(partial["counts"]), partial["weight"], partial["stats"]
        record: dict = {}
        bar = tqdm(total=spe, initial=done, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not show, leave=False,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        step_t = time.perf_counter()
        try:
            for i, (x, y) in enumerate(data.batches(train, cfg["batch_size"], shuffle=True, generator=gen,
                                                    augment=cfg["dataset"] == "cifar10")):
                if i < done:  # resumed inside the epoch: the same order, these batches were trained
                    if i + 1 == done and not torch.equal(gen.get_state(), partial["data_rng"]):
                        raise CheckpointError("the checkpoint's data order does not match this data set")
                    continue
                x, y = x.to(device), y.to(device)
                x_rank, y_rank = opt.local_batch(x, y) if world.active else (x, y)
                eps_t = sched(step)
                weight = cfg["robust_weight"] * sched.ramp_fraction(step)
                if bn:
                    _update_bn_stats(model, _center(opt), x)
                record.clear()
                loss_fn = population_loss(net, x_rank, y_rank, eps=eps_t, relaxation=cfg["relaxation"],
                                          robust_weight=weight, backend=cfg["backend"], record=record,
                                          sample_chunk=plan.sample_chunk)
                stats = opt.step(loss_fn, step)
                if world.active:
                    record.update(opt.gather_record(record, step))
                step += 1
                if world.active and check_every and step % check_every == 0:
                    world.check_same(opt.synced_state(), step)
                counts["nonfinite"] += stats.nonfinite
                counts["skipped"] += stats.skipped
                if math.isfinite(stats.loss_mean):
                    counts["finite_steps"] += 1
                    sums["loss"] += stats.loss_mean
                    sums["grad_norm"] += stats.grad_norm
                sums["nat"] += float(record["natural_acc"].mean())
                sums["nat_loss"] += float(record["natural_loss"].nanmean())
                sums["rob_loss"] += float(record["robust_loss"].nanmean())
                cert = float(record["certified_acc"].nanmean()) if eps_t > 0 else float("nan")
                if math.isfinite(cert):
                    sums["cert"] += cert
                    counts["cert_steps"] += 1
                now = time.perf_counter()
                clock.observe(step - 1, step, now - step_t)
                step_t = now
                bar.update(1)
                bar.set_postfix_str(f"loss {stats.loss_mean:.3f}, train eps {eps_t:.3g}, run ETA "
                                    f"{format_duration(clock.eta(step))}")
                if i + 1 < spe and time.monotonic() - last_save >= cfg["checkpoint_every"]:
                    part = {"batch": i + 1, "sums": dict(sums), "counts": dict(counts), "weight": weight,
                            "stats": stats, "data_rng": gen.get_state(),
                            "epoch_time_s": epoch_time + time.perf_counter() - t0}
                    save(payload(epoch, part), out / checkpoint.LAST)
                    last_save = time.monotonic()
        except NonFiniteCenterError as e:
            status = "diverged"
            message = (f"training stopped: {e} (epoch {epoch + 1}); the last good checkpoint is "
                       f"{out / checkpoint.LAST if (out / checkpoint.LAST).exists() else 'none (no epoch finished)'}")
            bar.close()
            break
        except KeyboardInterrupt:
            bar.close()
            say(f"gls.train: interrupted; {_resume_hint(out)}", file=sys.stderr)
            return 130
        bar.close()
        partial = None
        nonfinite, finite_steps, cert_steps = counts["nonfinite"], counts["finite_steps"], counts["cert_steps"]
        load_weights(model, _center(opt))
        if bn:
            model.eval()
        eval_eps = cfg["eps"]
        row = {"epoch": epoch + 1, "step": step, "eps": sched(step - 1), "robust_weight": weight,
               "lr": cfg["lr"] * lr_factor(epoch, cfg["lr_milestones"], cfg["lr_decay"]),
               "train_loss": sums["loss"] / max(finite_steps, 1), "train_natural_loss": sums["nat_loss"] / spe,
               "train_robust_loss": sums["rob_loss"] / spe, "train_natural_acc": sums["nat"] / spe,
               "train_certified_acc": sums["cert"] / cert_steps if cert_steps else None,
               "nonfinite_members": nonfinite, "skipped_steps": counts["skipped"],
               "sigma_mean": stats.sigma_mean, "sigma_min": stats.sigma_min, "sigma_max": stats.sigma_max,
               "grad_norm": sums["grad_norm"] / max(finite_steps, 1)}
        t_val = time.perf_counter()
        row.update(_validate(net, val, eval_eps, cfg["relaxation"], cfg["eval_batch_size"], cfg["backend"], world,
                             val_sub))
        clock.observe_validation(time.perf_counter() - t_val)
        row["val_eps"] = eval_eps
        row["time_s"] = epoch_time + time.perf_counter() - t0
        elapsed += row["time_s"]
        row["elapsed_s"] = elapsed
        history.append(row)
        if main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if world.active:  # what is saved must be every rank's state
            world.check_same(opt.synced_state(), step)
        ramped = sched(step - 1) >= cfg["train_eps"]
        if ramped and (best is None or row["val_certified_acc"] > best["val_certified_acc"]):
            best = {"epoch": epoch + 1, "val_certified_acc": row["val_certified_acc"],
                    "val_natural_acc": row["val_natural_acc"]}
            save(payload(epoch + 1), out / checkpoint.BEST)
        save(payload(epoch + 1), out / checkpoint.LAST)
        last_save = time.monotonic()
        plot(history, out / "curves.png", cfg, best["epoch"] if best else None)
        eta = f", run ETA {format_duration(clock.eta(step))}" if epoch + 1 < cfg["epochs"] else ""
        say(f"epoch {epoch + 1}/{cfg['epochs']}: train eps {row['eps']:.4g} loss {row['train_loss']:.4f}  |  "
            f"{val_label} at eps {eval_eps:g}: natural {100 * row['val_natural_acc']:.2f}%  certified "
            f"({cfg['relaxation']}) {100 * row['val_certified_acc']:.2f}%  |  nonfinite {nonfinite}  "
            f"{row['time_s']:.1f} s{eta}", flush=True)
        if cfg["halt_after_epoch"] is not None and epoch + 1 >= cfg["halt_after_epoch"] and epoch + 1 < cfg["epochs"]:
            say(f"halted after epoch {epoch + 1} (--halt-after-epoch); continue with --resume {out}")
            return 0

    summary = {"status": status, "message": message, "epochs_done": len(history), "steps": step,
               "train_time_s": elapsed, "best": best, "run_dir": str(out), "world_size": world.size}
    if status == "diverged":
        write_json(out / "summary.json", summary)
        say(f"gls.train: {message}", file=sys.stderr)
        return 3
    final = final_path = full = None
    if main:
        final_path = checkpoint.resolve(out, checkpoint.BEST if best is not None else checkpoint.LAST)
        final = full = checkpoint.load(final_path)
    if world.active:
        final = world.broadcast_object(final and {k: final[k] for k in ("theta", "buffers", "epoch")},
                                       "the final checkpoint broadcast")
    load_weights(model, final["theta"], final["buffers"])
    t0 = time.perf_counter()
    result = distributed.evaluate(world, evaluate, model, test, cfg["eps"], methods=cfg["certify"],
                                  batch_size=cfg["eval_batch_size"], pgd_steps=cfg["pgd_steps"],
                                  pgd_restarts=cfg["pgd_restarts"], seed=cfg["seed"], backend=cfg["backend"],
                                  device=device, progress=show, max_memory=budget)
    summary.update({"evaluated_checkpoint": "best" if best is not None else "last", "test": result,
                    "eval_time_s": time.perf_counter() - t0})
    write_json(out / "summary.json", summary)
    if main:
        say(f"test evaluation of the {summary['evaluated_checkpoint']} {describe_checkpoint(final_path, full)}; "
            f"training {format_duration(elapsed)}, evaluation {format_duration(summary['eval_time_s'])}:")
    say(format_table(result))
    say(f"run directory: {out}")
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m gls.train``; returns the exit status (errors: one line, non-zero)."""
    try:
        cli = config.parse_args(sys.argv[1:] if argv is None else argv)
        resume = None
        if "resume" in cli:
            resume = checkpoint.load(cli["resume"])
            cli.setdefault("out", str(checkpoint.resolve(cli["resume"]).parent))
            cfg = config.resolve(cli, saved=resume["config"])
        else:
            cfg = config.resolve(cli)
        return run(cfg, resume)
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
