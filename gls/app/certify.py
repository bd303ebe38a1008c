"""Evaluate a network: natural accuracy, PGD accuracy and certified accuracy per relaxation and best-of.

``python -m gls.certify RUN_DIR_OR_CKPT [--eps E] [--which best|last] [--subset N] [--threads T] ...``
prints the table for a training checkpoint, headed by the checkpoint it evaluated (file, epoch, step).
Certified means every margin's lower bound is > 0 over the whole eps-ball (clipped to the pixel
domain); "best" counts a sample certified by any of the relaxations tried (``--methods`` may add
alpha-crown, gls.alpha_crown, to them).
``python -m gls.certify --onnx MODEL.onnx --vnnlib PROP.vnnlib`` answers one VNN-COMP instance instead
(gls.onnx_io, gls.vnnlib): every method's bound of every clause, and unsat / sat / unknown.
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
from gls.alpha_crown import NAME as ALPHA
from gls.bounds import compute_bounds
from gls.app.config import check_device
from gls.net import Network
from gls.problem import certified, method_names


def evaluate(model: nn.Sequential, split: data.Split, eps: float, *, methods=("ibp", "crown-ibp", "deeppoly"),
             batch_size: int = 256, pgd_steps: int = 40, pgd_restarts: int = 1, seed: int = 0, backend=None,
             device="cpu", progress: bool = False, sound: bool = True, max_memory: int | None = None) -> dict:
    """Accuracies (fractions) of `model` on `split` at radius `eps`; see the module docstring.

    Each relaxation bounds as many samples per pass as gls.memory estimates to fit `max_memory` bytes
    (default: gls.memory.default_budget), planned with the unstable neurons of an IBP pass on the first
    batch, and gives each pass that budget to block its back-substitutions in (gls.compute_bounds);
    MemoryPlanError when not even one sample fits."""
    methods = tuple(_method_list(methods))
    model = model.to(device).eval()
    net = Network.from_module(model)
    in_shape = tuple(split.x.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    counts = {"natural": 0, "pgd": 0, "best": 0, **{m: 0 for m in methods}}
    seconds = {k: 0.0 for k in counts}
    n = len(split)
    budget = max_memory or memory.default_budget(torch.device(device))
    shape = memory.NetShape.of(net, in_shape)
    first = split.x[:batch_size].to(device)
    unstable = memory.unstable_counts(model, first, eps) if len(first) else None
    sub = {m: _cert_batch(shape, m, batch_size, budget, torch.device(device), sound, unstable) for m in methods}
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
                    lower = compute_bounds(net, x[j], eps, method=m, labels=y[j], backend=backend, sound=sound,
                                           budget=budget).lower[0]
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


def certify_instance(onnx_path, vnnlib_path, *, methods=("ibp", "crown-ibp", "deeppoly"), sound: bool = True) -> dict:
    """Answer a VNN-COMP instance: the network of `onnx_path` (gls.onnx_io, run in float64) on the property
    of `vnnlib_path` (gls.vnnlib). Per method, every clause's bound max_r (lower C_r y - d_r) over its rows
    (> 0: the clause is infeasible) and the time; the result is "unsat" when some method proves every
    clause infeasible, "sat" when the box's centre satisfies a clause, else "unknown"."""
    from gls.onnx_io import load_onnx
    from gls.vnnlib import ball_of_box, read_vnnlib

    methods = _method_list(methods)
    loaded = load_onnx(onnx_path)
    model = loaded.model.double()
    n = math.prod(loaded.in_shape)
    with torch.no_grad():
        K = model(torch.zeros(1, *loaded.in_shape, dtype=torch.float64)).shape[-1]
    prop = read_vnnlib(vnnlib_path, num_inputs=n, num_outputs=K)
    x, eps, domain = ball_of_box(prop.lo, prop.hi)
    x = x.reshape(1, *loaded.in_shape)
    spec = prop.C.unsqueeze(0)
    out = {"onnx": str(onnx_path), "vnnlib": str(vnnlib_path), "inputs": n, "outputs": K, "eps": eps,
           "domain": list(domain), "clauses": len(prop.clauses), "sound": sound, "methods": {}}
    with torch.no_grad():
        y = spec @ model(x).unsqueeze(-1)  # C y at the centre
    holds = [bool((y[0, idx, 0] <= prop.d[idx]).all()) for idx in prop.clauses]
    result = "sat" if any(holds) else "unknown"
    for m in methods:
        t = time.perf_counter()
        with torch.no_grad():
            lower = compute_bounds(model, x, torch.tensor([eps], dtype=torch.float64), method=m, spec=spec,
                                   domain=domain, sound=sound).lower[0, 0]
        margin = lower - prop.d
        per_clause = torch.stack([margin[idx].max() for idx in prop.clauses])
        out["methods"][m] = {"clause_bounds": per_clause.tolist(), "seconds": time.perf_counter() - t}
        if result == "unknown" and bool((per_clause > 0).all()):
            result = "unsat"
            out["proved_by"] = m
    out["result"] = result
    return out


def format_instance(res: dict) -> str:
    """The answer to an instance (certify_instance) as a few lines: one per method, then the result."""
    mode = "sound bounds" if res["sound"] else "float64 bounds (not guarded against rounding)"
    lines = [f"instance {res['onnx']} {res['vnnlib']}: {res['inputs']} inputs in x +- {res['eps']:.6g} clipped to "
             f"[{res['domain'][0]:g}, {res['domain'][1]:g}], {res['clauses']} clauses over {res['outputs']} outputs, {mode}",
             "  per clause: max over its rows of (lower bound of C_r y) - d_r; > 0 proves the clause infeasible"]
    width = max(len(m) for m in res["methods"])
    for m, r in res["methods"].items():
        b = r["clause_bounds"]
        shown = " ".join(f"{v:.4g}" for v in b[:10]) + (" ..." if len(b) > 10 else "")
        proved = sum(v > 0 for v in b)
        lines.append(f"  {m:<{width}}  {proved}/{len(b)} proved  ({r['seconds']:.2f} s)  [{shown}]")
    why = {"sat": " (the centre of the box satisfies a clause)", "unsat": f" (proved by {res.get('proved_by')})",
           "unknown": ""}[res["result"]]
    lines.append(f"result: {res['result']}{why}")
    return "\n".join(lines)


def _cert_batch(shape: memory.NetShape, method: str, batch: int, budget: int, device, sound: bool,
                unstable=None) -> int:
    """Samples per pass: gls.memory's estimate; for alpha-crown DeepPoly's plus, per sample, about 8 float32
    copies (slopes, best slopes, Adam's moments, gradient, kept activations) of every row of every layer."""
    if method != ALPHA:
        return memory.cert_batch(shape, method, batch, budget, device, sound=sound, unstable=unstable)
    per_sample = 8 * 4 * (shape.classes - 1) * shape.outputs * (2 if sound else 1)
    s = batch
    while s > 1 and memory.cert_bytes(shape, "deeppoly", s, device, sound, unstable, budget) + s * per_sample > budget:
        s //= 2
    return s


def _method_list(methods) -> list[str]:
    """method_names, with alpha-crown (gls.alpha_crown) allowed beside the relaxations of gls.problem (last)."""
    methods = list(methods)
    try:
        names = method_names([m for m in methods if m != ALPHA])
    except ValueError as e:
        raise ValueError(f"{e}, {ALPHA}") from None
    return names + ([ALPHA] if ALPHA in methods else [])


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="ex")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def main(argv=None) -> int:
    from gls import distributed

    p = _Parser(prog="python -m gls.certify", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("checkpoint", nargs="?", help="a run directory or a checkpoint file")
    p.add_argument("--onnx", default=None, help="instead of a checkpoint: an ONNX network (with --vnnlib)")
    p.add_argument("--vnnlib", default=None, help="a VNN-LIB property of the --onnx network: answer that instance")
    p.add_argument("--which", choices=("last", "best"), default="best", help="checkpoint of a run directory")
    p.add_argument("--eps", type=float, default=None, help="radius (default: the run's --eps)")
    p.add_argument("--data-dir", default=None, help="data directory (default: the run's)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--subset", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--methods", default="ibp,crown-ibp,deeppoly",
                   help="relaxations, comma separated: ibp, hbox, crown-ibp, deeppoly (crown), alpha-crown")
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--pgd-restarts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1, as in training: on a shared machine torch's busy-waiting "
                        "threads ran many times slower than one thread; 0 = torch's default)")
    p.add_argument("--max-memory", default=None,
                   help="memory a certification pass may use, with a unit: 8GB, 1.5GiB, 800M (default: 70%% of the "
                        "available RAM); the samples per pass and the blocks of rows each back-substitution takes "
                        "follow it")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--no-sound", dest="sound", action="store_false",
                   help="float32 bounds instead of sound ones (faster; may be off by rounding)")
    try:
        args = p.parse_args(argv)
        if args.onnx is not None or args.vnnlib is not None:
            return _instance(args)
        if args.checkpoint is None:
            raise ValueError("give a run directory or checkpoint, or --onnx MODEL --vnnlib PROPERTY")
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
    except (ValueError, TypeError, checkpoint.CheckpointError, data.DataError, OSError, ImportError,
            distributed.DistributedError) as e:
        print(f"gls.certify: error: {e}", file=sys.stderr)
        return 2
    return 0


def _instance(args) -> int:
    """`--onnx M --vnnlib P`: answer one VNN-COMP instance (certify_instance) and print it."""
    if args.onnx is None or args.vnnlib is None or args.checkpoint is not None:
        raise ValueError("--onnx and --vnnlib go together, without a checkpoint")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        raise ValueError(f"--methods names no relaxation: {args.methods!r}")
    res = certify_instance(args.onnx, args.vnnlib, methods=methods, sound=args.sound)
    print(format_instance(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0
