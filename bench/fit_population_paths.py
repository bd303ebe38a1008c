"""Fit gls.population_paths' cost model on this machine: time every (path, pairing) on the interval steps of
bench.workload's networks, fit each one's constants by non-negative least squares, print the COSTS entry.

    python -m bench.fit_population_paths [--threads 2] [--rounds 3] [--device cpu|cuda] [--networks ...] [--out fit.json]

Layers: every Linear/Conv interval step of mlp (B = 8, 64), cnn3 (B = 8, 64) and cnn7 (B = 4) as the
IBP pass meets them (the first one with its input shared by the members), populations 1, 16 and 64
(cnn7: 1, 16), and shared weights (folded) at P = 16; random centres and radii. A time is the best of
`rounds` calls after one warm-up, the candidates timed in turns. The model, per (path, pairing): t =
c_call * calls + c_mac * multiply-adds + c_elem * elements moved (gls.population_paths.features).
Paste the printed dict into COSTS[<device type>]; the GPU check (bench.gpu_check) runs this on a GPU.
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
import torch
from scipy.optimize import nnls

import gls
from gls import population_paths as pp
from gls.affine import Conv, Dense
from bench import workload

GRID = [("mlp", 64, (1, 16, 64)), ("mlp", 8, (1, 16, 64)), ("cnn3", 8, (1, 16, 64)), ("cnn3", 64, (1, 16, 64)), ("cnn7", 4, (1, 16))]


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fns: dict, rounds: int, device: torch.device = torch.device("cpu")) -> dict:
    """{key: best of `rounds` timings} of the calls in `fns`, after one warm-up each, in turns (one
    round of every call, then the next round), so that a spell of load from other work hits every
    candidate alike rather than the ones measured while it lasted."""
    best = {}
    for key, fn in fns.items():
        fn()
        best[key] = float("inf")
    for _ in range(rounds):
        for key, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best[key] = min(best[key], time.perf_counter() - t)
    return best


def layers(name: str):
    """(label, W (1, ...), b, geometry or None, first) of every interval step of the network's IBP pass."""
    module, x, _, _ = workload.build(name, 1, torch.device("cpu"))
    net = gls.Network.from_module(module)
    segs = net.plan(net.params(), x.shape[1:], torch.float32)
    ops = [op for seg in segs[:-1] for op in seg] + list(segs[-1][:-1])
    out, first = [], True
    for op in ops:
        if isinstance(op, (Conv, Dense)):
            geo = op.geometry if isinstance(op, Conv) else None
            out.append((f"{name} {type(op).__name__} {tuple(op.W.shape[1:])}", op.W.detach(), op.b.detach(), geo, first))
            first = False
    return out


def measure(rounds: int, device: torch.device = torch.device("cpu"), networks=None):
    rows = []
    with torch.inference_mode():
        for name, B, pops in GRID:
            if networks and name not in networks:
                continue
            for label, W, b, geo, first in layers(name):
                W, b = W.to(device), b.to(device)
                n_in = W.shape[-1] if geo is None else W.shape[2] * geo.in_shape[1] * geo.in_shape[2]
                for P in pops:
                    shapes = [(1 if first else P, P)] + ([(P, 1)] if P == 16 and not first else [])
                    for gx, gw in shapes:
                        # members as views into one (gw, d + 1) tensor: W not contiguous, as in a population
                        flat = torch.empty(gw, W[0].numel() + 1, device=device)
                        w = flat[:, 1:].view(gw, *W.shape[1:])
                        w.copy_(W.expand(gw, *W.shape[1:]) * (1 + 0.01 * torch.randn(gw, *W.shape[1:], device=device)))
                        bb = b.expand(gw, -1).contiguous()
                        mid, rad = torch.randn(gx, B, n_in, device=device), torch.rand(gx, B, n_in, device=device)
                        cands = pp.candidates(gx, gw, geo is None)
                        times = _best({(path, pairing): functools.partial(pp.interval, path, pairing, mid, rad, w, bb, geo)
                                       for path, pairing in cands}, rounds, device)
                        for (path, pairing), t in times.items():
                            f = pp.features(path, pairing, gx, gw, B, tuple(w.shape), geo, w.is_contiguous())
                            rows.append(dict(layer=label, kind="linear" if geo is None else "conv", B=B, gx=gx, gw=gw,
                                             path=path, pairing=pairing, seconds=t, features=f))
                            print(f"{label} B={B} x{gx} w{gw} {path}/{pairing}: {t * 1e3:.2f} ms", flush=True)
    return rows


def _key(row) -> tuple[str, str, str]:
    return row["kind"], row["path"], row["pairing"]


def fit(rows):
    """{(kind, path, pairing): (c_call, c_mac, c_elem)} by non-negative least squares on the times, each
    weighted by 1 / sqrt(its time). Absolute errors let CNN7's 0.3-0.8 s Linear layer set every constant
    and mispredicted the MLP's layers by 3-8x (picks 2.6x the fastest); relative errors let noisy short
    layers make im2col look fast (picks 4x the fastest, before the candidates were timed in turns); the
    middle way had the lowest summed and worst-layer regret on the timings of the fit in COSTS."""
    out = {}
    for key in sorted({_key(r) for r in rows}):
        sel = [r for r in rows if _key(r) == key]
        A = np.array([r["features"] for r in sel], dtype=float)
        t = np.array([r["seconds"] for r in sel])
        w = 1 / np.sqrt(t)
        coef, _ = nnls(A * w[:, None], t * w)
        worst = float(np.max(np.abs(A @ coef / t - 1)))
        out[key] = tuple(float(f"{c:.4g}") for c in coef)
        print(f"{key}: {out[key]}  (worst relative error {worst:.0%} over {len(t)} layers)")
    return out


def regret(rows, costs) -> str:
    """Summed over the measured layers: the time of the model's picks, of the fastest path, of one call."""
    layers = {}
    for r in rows:
        layers.setdefault((r["layer"], r["B"], r["gx"], r["gw"]), []).append(r)
    picked = best = one = 0.0
    for (_, _, gx, gw), rs in layers.items():
        pick = min(rs, key=lambda r: float(np.dot(costs[_key(r)], r["features"])))
        default = ("op", "paired") if rs[0]["kind"] == "linear" else \
            ("stacked" if gx < gw else "folded" if gw < gx else "grouped", "separate")
        picked += pick["seconds"]
        best += min(r["seconds"] for r in rs)
        one += next(r["seconds"] for r in rs if (r["path"], r["pairing"]) == default)
    return (f"over {len(layers)} layers: the model's picks {picked:.2f} s, the fastest measured {best:.2f} s, "
            f"one call for all members {one:.2f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where to time the layers: cpu (default) or cuda")
    parser.add_argument("--networks", nargs="+", choices=[g[0] for g in GRID], default=None,
                        help="only these networks' layers (default: all of GRID)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the timings and the fit as JSON here")
    parser.add_argument("--timings", default=None, help="fit the timings of an earlier --out file, measure nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.timings:
        with open(args.timings) as f:
            rows = json.load(f)["rows"]
    else:
        rows = measure(args.rounds, torch.device(args.device), args.networks)
    costs = fit(rows)
    print(regret(rows, costs))
    print(f"COSTS[{torch.device(args.device).type!r}] entry:", "{" + ", ".join(f"{k!r}: {v!r}" for k, v in costs.items()) + "}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=args.device, threads=args.threads, rows=rows, regret=regret(rows, costs),
                           costs={"/".join(k): v for k, v in costs.items()}), f, indent=1)


if __name__ == "__main__":
    main()
