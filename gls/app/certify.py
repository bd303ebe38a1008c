"""Evaluate a network: natural accuracy, PGD accuracy and certified accuracy per relaxation and best-of.

``python -m gls.certify RUN_DIR_OR_CKPT [--eps E] [--which best|last] [--subset N] [--threads T] ...``
prints the table for a training checkpoint, headed by the checkpoint it evaluated (file, epoch, step).
Certified means every margin's lower bound is > 0 over the whole eps-ball (clipped to the pixel
domain); "best" counts a sample certified by any of the relaxations tried.
By default the bounds are sound (compute_bounds(sound=True): true bounds of the real-valued network
despite floating-point rounding); ``--no-sound`` uses the faster float32 bounds. The table says which.
Ordering that always holds: certified <= PGD <= natural. Under ``torchrun`` the examples are sharded
over the ranks and the counts added up (gls.distributed); rank 0 prints.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from torch import nn

from gls import memory
from gls.app import checkpoint, data, heap
from gls.app.attack import pgd_robust
from gls.bounds import compute_bounds
from gls.app.config import check_device
from gls.net import Network
from gls.problem import certified, method_names


def evaluate(model: nn.Sequential, split: data.Split, eps: float, *, methods=("ibp", "crown-ibp", "deeppoly"),
             batch_size: int = 256, pgd_steps: int = 40, pgd_restarts: int = 1, seed: int = 0, backend=None,
             device="cpu", progress: bool = False, sound: bool = True, max_memory: int | None = None) -> dict:
    """Accuracies (fractions) of `model` on `split` at radius `eps`; see the module docstring.

    Each relaxation bounds as many samples per pass as gls.memory estimates to fit `max_memory` bytes
    (default: gls.memory.default_budget); MemoryPlanError when not even one sample fits."""
    methods = tuple(method_names(methods))
    model = model.to(device).eval()
    net = Network.from_module(model)
    in_shape = tuple(split.x.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    counts = {"natural": 0, "pgd": 0, "best": 0, **{m: 0 for m in methods}}
    seconds = {k: 0.0 for k in counts}
    n = len(split)
    budget = max_memory or memory.default_budget(torch.device(device))
    shape = memory.NetShape.of(net, in_shape)
    sub = {m: memory.cert_batch(shape, m, batch_size, budget, torch.device(device), sound=sound) for m in methods}
    bar = _bar(n, progress, "certify")
    for x, y in data.batches(split, batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        t = time.perf_counter()
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        seconds["natural"] += time.perf_counter() - t
        counts["natural"] += int(correct.sum())
        t = time.perf_counter()
        counts["pgd"] += int(pgd_robust(model, x, y, eps, steps=pgd_steps, restarts=pgd_restarts, generator=gen).sum())
        seconds["pgd"] += time.perf_counter() - t
        any_cert = torch.zeros_like(correct)
        idx = correct.nonzero().squeeze(1)  # a misclassified sample cannot be certified
        for m in methods:
            t = time.perf_counter()
            for start in range(0, idx.numel(), sub[m]):
                j = idx[start:start + sub[m]]
                with torch.no_grad():
                    lower = compute_bounds(net, x[j], eps, method=m, labels=y[j], backend=backend, sound=sound).lower[0]
                ok = certified(lower)
                counts[m] += int(ok.sum())
                any_cert[j] |= ok
            seconds[m] += time.perf_counter() - t
        counts["best"] += int(any_cert.sum())
        bar.update(len(y))
    bar.close()
    return {"n": n, "eps": eps, "methods": list(methods), "sound": sound, "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts,
            "accuracy": {k: v / max(n, 1) for k, v in counts.items()}, "seconds": seconds}


def describe_checkpoint(path, payload: dict) -> str:
    """Which checkpoint a table comes from: file, epoch (and batch when written inside an epoch), step."""
    cfg, part = payload["config"], payload.get("partial")
    of = f"/{cfg['epochs']}" if "epochs" in cfg else ""
    when = (f"inside epoch {payload['epoch'] + 1}{of} after {part['batch']} batches" if part
            else f"end of epoch {payload.get('epoch', '?')}{of}")
    what = " ".join(str(cfg[k]) for k in ("method", "relaxation", "net") if k in cfg)
    step = f", step {payload['step']}" if "step" in payload else ""
    return f"checkpoint {path} ({when}{step}; {what})"


def format_table(result: dict) -> str:
    acc = result["accuracy"]
    rows = [("natural", "natural"), (f"PGD-{result['pgd_steps']}x{result['pgd_restarts']}", "pgd")]
    rows += [(f"certified {m}", m) for m in result["methods"]] + [("certified best", "best")]
    width = max(len(label) for label, _ in rows)
    mode = ("sound bounds (float64 with a rigorous rounding allowance)" if result.get("sound")
            else "float32 bounds (not guarded against rounding)")
    lines = [f"eps = {result['eps']:g} on {result['n']} samples, {mode}"]
    lines += [f"  {label:<{width}}  {100 * acc[key]:6.2f} %   ({result['seconds'][key]:.1f} s)" for label, key in rows]
    return "\n".join(lines)


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="ex")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def main(argv=None) -> int:
    from gls import distributed

    p = _Parser(prog="python -m gls.certify", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("checkpoint", help="a run directory or a checkpoint file")
    p.add_argument("--which", choices=("last", "best"), default="best", help="checkpoint of a run directory")
    p.add_argument("--eps", type=float, default=None, help="radius (default: the run's --eps)")
    p.add_argument("--data-dir", default=None, help="data directory (default: the run's)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--subset", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--methods", default="ibp,crown-ibp,deeppoly", help="relaxations, comma separated")
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--pgd-restarts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1, as in training: on a shared machine torch's busy-waiting "
                        "threads ran many times slower than one thread; 0 = torch's default)")
    p.add_argument("--max-memory", default=None,
                   help="memory a certification pass may use, e.g. 8GB (default: 70%% of the available RAM)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--no-sound", dest="sound", action="store_false",
                   help="float32 bounds instead of sound ones (faster; may be off by rounding)")
    try:
        args = p.parse_args(argv)
        heap.keep_freed_memory()
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {args.threads}")
        if args.threads:
            torch.set_num_threads(args.threads)
        budget = memory.parse_size(args.max_memory) if args.max_memory else None
        which = checkpoint.BEST if args.which == "best" else checkpoint.LAST
        if args.subset is not None and args.subset < 1:
            raise ValueError(f"--subset must be a positive number of samples, got {args.subset}")
        methods = [m for m in args.methods.split(",") if m]
        if not methods:
            raise ValueError(f"--methods names no relaxation: {args.methods!r}")
        check_device(args.device)
        parent = os.path.dirname(os.path.abspath(args.json)) if args.json else None
        if parent is not None and not (os.path.isdir(parent) and os.access(parent, os.W_OK)):
            raise OSError(f"--json {args.json}: {parent} is not a writable directory")
        if which == checkpoint.BEST and os.path.isdir(args.checkpoint) and not os.path.exists(
                os.path.join(args.checkpoint, checkpoint.BEST)):  # a run whose eps never reached its target
            print(f"gls.certify: note: {args.checkpoint} has no {checkpoint.BEST}; using {checkpoint.LAST}", file=sys.stderr)
            which = checkpoint.LAST
        path = checkpoint.resolve(args.checkpoint, which)
        payload = checkpoint.load(path)
        model, cfg = checkpoint.model_from_checkpoint(payload)
        eps = cfg["eps"] if args.eps is None else args.eps
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"--eps must be a finite number >= 0, got {eps}")
        ds = data.load(cfg["dataset"], args.data_dir if args.data_dir is not None else cfg.get("data_dir"))
        split = getattr(ds, args.split).subset(args.subset)
        world = distributed.init(args.device)
        try:
            result = distributed.evaluate(world, evaluate, model, split, eps, methods=methods,
                                          batch_size=args.batch_size, pgd_steps=args.pgd_steps,
                                          pgd_restarts=args.pgd_restarts, backend=args.backend,
                                          device=distributed.device_of(world, args.device),
                                          progress=sys.stderr.isatty() and world.is_main, sound=args.sound,
                                          max_memory=budget)
        finally:
            world.close()
        if world.is_main:
            print(describe_checkpoint(path, payload))
            print(format_table(result))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(result, f, indent=2)
    except (ValueError, TypeError, checkpoint.CheckpointError, data.DataError, OSError,
            distributed.DistributedError) as e:
        print(f"gls.certify: error: {e}", file=sys.stderr)
        return 2
    return 0
