"""``python -m gls.train``: certified training by PGPE, RGS or plain gradients, with a run directory.

Without arguments it trains the default: real MNIST, the small MLP, plain-gradient IBP training at
eps = 0.1 (a few minutes on a 2-core CPU), then prints the evaluation table. Plain gradients with IBP
are the default because they are the one setting that reaches a high certified accuracy within that
budget on a CPU: IBP is the cheapest relaxation and gradient training needs one pass per step, where
PGPE needs a population of passes and tight relaxations cost several times more per pass.

Run directory (``--out``): config.json (the resolved options), metrics.jsonl (one line per epoch),
last.pt / best.pt (atomic checkpoints; best = highest validation certified accuracy once eps has
reached its target), curves.png and summary.json (the final test table). ``--resume RUN_DIR`` continues
exactly: the data order and the noise are functions of (seed, epoch) and (seed, step), and the
checkpoint holds the optimiser/PGPE state, counters and buffers.

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

from gls import checkpoint, config, data, distributed, models
from gls.certify import evaluate, format_table
from gls.models import load_weights
from gls.checkpoint import CheckpointError
from gls.config import ConfigError
from gls.net import Network
from gls.objective import population_loss
from gls.schedule import EpsSchedule, lr_factor
from gls.smoothing import PGPE, RGS, NonFiniteCenterError, make_torch_optimizer


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2 ** 63)


def _make_optimizer(cfg: dict, theta: torch.Tensor, world: distributed.World | None = None):
    """The PGPE or RGS optimiser of `cfg`; under torchrun (an active `world`) the one that splits the step."""
    split = world is not None and world.active
    extra = {"world": world} if split else {}
    if cfg["method"] == "pgpe":
        cls = distributed.DistributedPGPE if split else PGPE
        return cls(theta, sigma=cfg["sigma"], lr=cfg["lr"], population=cfg["population"], seed=cfg["seed"],
                   optimizer=cfg["optimizer"], max_speed=cfg["max_speed"], adapt_sigma=cfg["adapt_sigma"],
                   stdev_lr=cfg["stdev_lr"], stdev_max_change=cfg["stdev_max_change"],
                   pair_chunk=cfg["pair_chunk"] or None, **extra)
    clip = cfg["grad_clip"] if cfg["grad_clip"] and cfg["grad_clip"] > 0 else None
    cls = distributed.DistributedRGS if split else RGS
    return cls(theta, sigma=cfg["sigma"], samples=cfg["population"], seed=cfg["seed"], antithetic=cfg["antithetic"],
               optimizer=make_torch_optimizer(cfg["optimizer"], cfg["lr"]), grad_clip=clip, **extra)


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
              world: distributed.World) -> dict:
    """Centre network on the validation subset: natural and certified (training relaxation) accuracy
    (each rank counts its shard)."""
    from gls.bounds import compute_bounds

    nat = cert = 0
    with torch.no_grad():
        for x, y in data.batches(world.shard(split), batch_size, shuffle=False):
            nat += int((net.forward(x)[0].argmax(-1) == y).sum())
            if eps > 0:
                lower = compute_bounds(net, x, eps, method=relaxation, labels=y, backend=backend).lower[0]
                cert += int((lower > 0).all(-1).sum())
    nat, cert = distributed.validate_counts(world, [nat, cert])
    n = max(len(split), 1)
    return {"val_natural_acc": nat / n, "val_certified_acc": cert / n if eps > 0 else nat / n}


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, [h["train_loss"] for h in history], label="train loss (population mean)")
    axes[0].set_yscale("log")
    axes[1].plot(ep, [h["val_natural_acc"] for h in history], label="val natural")
    axes[1].plot(ep, [h["val_certified_acc"] for h in history], label="val certified")
    axes[1].plot(ep, [h["train_natural_acc"] for h in history], "--", label="train natural")
    axes[1].plot(ep, [h["train_certified_acc"] for h in history], "--", label="train certified")
    axes[2].plot(ep, [h["eps"] for h in history], label="eps (end of epoch)")
    ax2 = axes[2].twinx()
    ax2.plot(ep, [h["sigma_mean"] for h in history], "r:", label="sigma mean")
    ax2.set_ylabel("sigma")
    for ax, title in zip(axes, ("loss", "accuracy", "schedule")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


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
    save, plot, say, write_json = (world.main_only(f) for f in (checkpoint.save, _plot, print, _write_json))
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
    opt = _make_optimizer(cfg, theta0, world)
    spe = data.num_batches(len(train), cfg["batch_size"])
    sched = EpsSchedule(cfg["train_eps"], cfg["eps_start_epoch"], cfg["eps_end_epoch"], spe, cfg["eps_schedule"])

    epoch, step, best, elapsed = 0, 0, None, 0.0
    if resume_payload is not None:
        opt.load_state_dict(resume_payload["optimizer"])
        load_weights(model, _center(opt), resume_payload.get("buffers"))
        epoch, step, best = resume_payload["epoch"], resume_payload["step"], resume_payload["best"]
        elapsed = resume_payload.get("elapsed_s", 0.0)
        torch.set_rng_state(resume_payload["torch_rng"])
    history = _read_metrics(out / "metrics.jsonl", epoch)
    write_json(out / "config.json", cfg)
    if main:
        with open(out / "metrics.jsonl", "w") as f:  # drop epochs after the checkpoint (a killed run's tail)
            f.writelines(json.dumps(h) + "\n" for h in history)

    def payload(ep: int) -> dict:
        return {"config": cfg, "epoch": ep, "step": step, "best": best, "elapsed_s": elapsed,
                "theta": _center(opt).clone(), "optimizer": opt.state_dict(),
                "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
                "torch_rng": torch.get_rng_state()}

    show = _progress(cfg) and main
    check_every = cfg["sync_check_every"]
    bn = _has_bn(model)
    status, message = "finished", None
    for epoch in range(epoch, cfg["epochs"]):
        t0 = time.perf_counter()
        opt.set_lr(cfg["lr"] * lr_factor(epoch, cfg["lr_milestones"], cfg["lr_decay"]))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg["seed"], epoch))
        sums = {"loss": 0.0, "nat": 0.0, "cert": 0.0, "grad_norm": 0.0, "nat_loss": 0.0, "rob_loss": 0.0}
        finite_steps = nonfinite = skipped = 0
        cert_steps = 0
        record: dict = {}
        bar = tqdm(total=spe, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not show, leave=False)
        try:
            for x, y in data.batches(train, cfg["batch_size"], shuffle=True, generator=gen,
                                     augment=cfg["dataset"] == "cifar10"):
                x, y = x.to(device), y.to(device)
                x_rank, y_rank = opt.local_batch(x, y) if world.active else (x, y)
                eps_t = sched(step)
                weight = cfg["robust_weight"] * sched.ramp_fraction(step)
                if bn:
                    _update_bn_stats(model, _center(opt), x)
                record.clear()
                loss_fn = population_loss(net, x_rank, y_rank, eps=eps_t, relaxation=cfg["relaxation"],
                                          robust_weight=weight, backend=cfg["backend"], record=record)
                stats = opt.step(loss_fn, step)
                if world.active:
                    record.update(opt.gather_record(record, step))
                step += 1
                if world.active and check_every and step % check_every == 0:
                    world.check_same(opt.synced_state(), step)
                nonfinite += stats.nonfinite
                skipped += stats.skipped
                if math.isfinite(stats.loss_mean):
                    finite_steps += 1
                    sums["loss"] += stats.loss_mean
                    sums["grad_norm"] += stats.grad_norm
                sums["nat"] += float(record["natural_acc"].mean())
                sums["nat_loss"] += float(record["natural_loss"].nanmean())
                sums["rob_loss"] += float(record["robust_loss"].nanmean())
                cert = float(record["certified_acc"].nanmean()) if eps_t > 0 else float("nan")
                if math.isfinite(cert):
                    sums["cert"] += cert
                    cert_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats.loss_mean:.3f}", eps=f"{eps_t:.3g}")
        except NonFiniteCenterError as e:
            status = "diverged"
            message = (f"training stopped: {e} (epoch {epoch + 1}); the last good checkpoint is "
                       f"{out / checkpoint.LAST if (out / checkpoint.LAST).exists() else 'none (no epoch finished)'}")
            bar.close()
            break
        bar.close()
        load_weights(model, _center(opt))
        if bn:
            model.eval()
        eval_eps = cfg["eps"]
        row = {"epoch": epoch + 1, "step": step, "eps": sched(step - 1), "robust_weight": weight,
               "lr": cfg["lr"] * lr_factor(epoch, cfg["lr_milestones"], cfg["lr_decay"]),
               "train_loss": sums["loss"] / max(finite_steps, 1), "train_natural_loss": sums["nat_loss"] / spe,
               "train_robust_loss": sums["rob_loss"] / spe, "train_natural_acc": sums["nat"] / spe,
               "train_certified_acc": sums["cert"] / cert_steps if cert_steps else None,
               "nonfinite_members": nonfinite, "skipped_steps": skipped,
               "sigma_mean": stats.sigma_mean, "sigma_min": stats.sigma_min, "sigma_max": stats.sigma_max,
               "grad_norm": sums["grad_norm"] / max(finite_steps, 1)}
        row.update(_validate(net, val, eval_eps, cfg["relaxation"], cfg["eval_batch_size"], cfg["backend"], world))
        elapsed += time.perf_counter() - t0
        row["time_s"] = time.perf_counter() - t0
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
        plot(history, out / "curves.png")
        say(f"epoch {epoch + 1}/{cfg['epochs']}: loss {row['train_loss']:.4f}  eps {row['eps']:.4g}  "
            f"val nat {100 * row['val_natural_acc']:.2f}%  val cert({cfg['relaxation']}) "
            f"{100 * row['val_certified_acc']:.2f}%  nonfinite {nonfinite}  {row['time_s']:.1f}s", flush=True)
        if cfg["halt_after_epoch"] is not None and epoch + 1 >= cfg["halt_after_epoch"] and epoch + 1 < cfg["epochs"]:
            say(f"halted after epoch {epoch + 1} (--halt-after-epoch); continue with --resume {out}")
            return 0

    summary = {"status": status, "message": message, "epochs_done": len(history), "steps": step,
               "train_time_s": elapsed, "best": best, "run_dir": str(out), "world_size": world.size}
    if status == "diverged":
        write_json(out / "summary.json", summary)
        say(f"gls.train: {message}", file=sys.stderr)
        return 3
    final = None
    if main:
        final = checkpoint.load(out, checkpoint.BEST) if best is not None else checkpoint.load(out, checkpoint.LAST)
    if world.active:
        final = world.broadcast_object(final and {k: final[k] for k in ("theta", "buffers", "epoch")},
                                       "the final checkpoint broadcast")
    load_weights(model, final["theta"], final["buffers"])
    t0 = time.perf_counter()
    result = distributed.evaluate(world, evaluate, model, test, cfg["eps"], methods=cfg["certify"],
                                  batch_size=cfg["eval_batch_size"], pgd_steps=cfg["pgd_steps"],
                                  pgd_restarts=cfg["pgd_restarts"], seed=cfg["seed"], backend=cfg["backend"],
                                  device=device, progress=show)
    summary.update({"evaluated_checkpoint": "best" if best is not None else "last", "test": result,
                    "eval_time_s": time.perf_counter() - t0})
    write_json(out / "summary.json", summary)
    say(f"test evaluation of the {summary['evaluated_checkpoint']} checkpoint "
        f"(epoch {final['epoch']}; training {elapsed:.0f} s, evaluation {summary['eval_time_s']:.0f} s):")
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
    except (ConfigError, CheckpointError, data.DataError) as e:
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


if __name__ == "__main__":
    sys.exit(main())
