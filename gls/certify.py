"""Evaluate a network: natural accuracy, PGD accuracy and certified accuracy per relaxation and best-of.

``python -m gls.certify RUN_DIR_OR_CKPT [--eps E] [--which best|last] [--subset N] ...`` prints the table
for a training checkpoint. Certified means every margin's lower bound is > 0 over the whole eps-ball
(clipped to the pixel domain); "best" counts a sample certified by any of the relaxations tried.
Ordering that always holds: certified <= PGD <= natural. Under ``torchrun`` the examples are sharded
over the ranks and the counts added up (gls.distributed); rank 0 prints.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from torch import nn

from gls import checkpoint, data, models
from gls.attack import pgd_robust
from gls.bounds import METHODS, compute_bounds
from gls.net import Network

_BACKSUB_MEMORY = 1 << 30  # bytes allowed for the back-substitution coefficients of one batch


def model_from_checkpoint(payload: dict) -> tuple[nn.Sequential, dict]:
    cfg = payload["config"]
    mean, std = data.STATS[cfg["dataset"]]
    model = models.build(cfg["net"], data.SHAPES[cfg["dataset"]], mean, std, width=cfg.get("width"))
    return models.load_weights(model, payload["theta"], payload.get("buffers")).eval(), cfg


def _cert_batch(net: Network, in_shape, method: str, batch_size: int) -> int:
    """Batch size that keeps back-substitution memory (rows x width per sample) within budget."""
    if method in ("ibp", "crown-ibp"):
        return batch_size
    segs = net.plan(net.params(), in_shape, torch.float32)
    widths = [op.n_in for seg in segs for op in seg] + [seg[-1].n_out for seg in segs if seg]
    rows = 2 * max([seg[-1].n_out for seg in segs[:-1] if seg] + [1])
    per_sample = 12 * rows * max(widths)
    return max(1, min(batch_size, _BACKSUB_MEMORY // per_sample))


def evaluate(model: nn.Sequential, split: data.Split, eps: float, *, methods=("ibp", "crown-ibp", "deeppoly"),
             batch_size: int = 256, pgd_steps: int = 40, pgd_restarts: int = 1, seed: int = 0, backend=None,
             device="cpu", progress: bool = False) -> dict:
    """Accuracies (fractions) of `model` on `split` at radius `eps`; see the module docstring."""
    methods = tuple(dict.fromkeys({"crown": "deeppoly"}.get(m, m) for m in methods))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown relaxation(s) {bad}; expected some of {METHODS}")
    model = model.to(device).eval()
    net = Network.from_module(model)
    in_shape = tuple(split.x.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    counts = {"natural": 0, "pgd": 0, "best": 0, **{m: 0 for m in methods}}
    seconds = {k: 0.0 for k in counts}
    n = len(split)
    sub = {m: _cert_batch(net, in_shape, m, batch_size) for m in methods}
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
                    lower = compute_bounds(net, x[j], eps, method=m, labels=y[j], backend=backend).lower[0]
                ok = (lower > 0).all(-1)
                counts[m] += int(ok.sum())
                any_cert[j] |= ok
            seconds[m] += time.perf_counter() - t
        counts["best"] += int(any_cert.sum())
        bar.update(len(y))
    bar.close()
    return {"n": n, "eps": eps, "methods": list(methods), "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts,
            "accuracy": {k: v / max(n, 1) for k, v in counts.items()}, "seconds": seconds}


def format_table(result: dict) -> str:
    acc = result["accuracy"]
    rows = [("natural", "natural"), (f"PGD-{result['pgd_steps']}x{result['pgd_restarts']}", "pgd")]
    rows += [(f"certified {m}", m) for m in result["methods"]] + [("certified best", "best")]
    width = max(len(label) for label, _ in rows)
    lines = [f"eps = {result['eps']:g} on {result['n']} samples"]
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

    p = _Parser(prog="python -m gls.certify", description=__doc__.split("\n")[0])
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
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    try:
        args = p.parse_args(argv)
        which = checkpoint.BEST if args.which == "best" else checkpoint.LAST
        try:
            payload = checkpoint.load(args.checkpoint, which)
        except checkpoint.CheckpointError:
            if which != checkpoint.BEST:
                raise
            payload = checkpoint.load(args.checkpoint, checkpoint.LAST)
        model, cfg = model_from_checkpoint(payload)
        eps = cfg["eps"] if args.eps is None else args.eps
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"--eps must be a finite number >= 0, got {eps}")
        ds = data.load(cfg["dataset"], args.data_dir if args.data_dir is not None else cfg.get("data_dir"))
        split = getattr(ds, args.split).subset(args.subset)
        world = distributed.init(args.device)
        try:
            result = distributed.evaluate(world, evaluate, model, split, eps, methods=[m for m in args.methods.split(",") if m],
                                          batch_size=args.batch_size, pgd_steps=args.pgd_steps,
                                          pgd_restarts=args.pgd_restarts, backend=args.backend,
                                          device=distributed.device_of(world, args.device),
                                          progress=sys.stderr.isatty() and world.is_main)
        finally:
            world.close()
    except (ValueError, TypeError, checkpoint.CheckpointError, data.DataError, OSError,
            distributed.DistributedError) as e:
        print(f"gls.certify: error: {e}", file=sys.stderr)
        return 2
    if not world.is_main:
        return 0
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
