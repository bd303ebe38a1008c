"""``python -m gls.study paradox --estimate``: measure a preset's step times here, predict the study's time.

For each grid cell: one warm-up and two timed optimiser steps on a real mini-batch at the target eps
from the initial weights; per-image certification time of every relaxation and of PGD on a batch of
test images. :func:`gls.app.study.paradox.estimate_seconds` turns them into the predicted time, so a budget
can be re-derived on another machine or after the bounds get faster.
"""
from __future__ import annotations


import torch

from gls.app import data, models
from gls.app.attack import pgd_robust
from gls.bounds import compute_bounds
from gls.net import Network
from gls.objective import population_loss
from gls.smoothing import PGPE, RGS, make_torch_optimizer
from gls.app.study import paradox
from gls.app.timing import best_of


def _optimizer(spec, opt, theta):
    if opt == "pgpe":
        p = spec["pgpe"]
        return PGPE(theta, sigma=p["sigma"], lr=p["lr"], population=p["population"], seed=0, optimizer=p["optimizer"],
                    adapt_sigma=p["adapt_sigma"])
    samples, sigma = (1, 0.0) if opt == "grad" else (spec["rgs"]["population"], spec["rgs"]["sigma"])
    return RGS(theta, sigma=sigma, samples=samples, seed=0, optimizer=make_torch_optimizer("adam", spec["train"]["lr"]))


def measure(spec: dict, reps: int = 2, n_images: int = 64) -> tuple[dict, dict, float, int]:
    t = spec["train"]
    torch.set_num_threads(t.get("threads") or torch.get_num_threads())
    device = torch.device(t["device"])
    ds = data.load(t["dataset"], t.get("data_dir"))
    n_train = len(ds.train.subset(t["train_subset"]))
    x, y = ds.train.x[:t["batch_size"]].to(device), ds.train.y[:t["batch_size"]].to(device)
    torch.manual_seed(t["seed"])
    model = models.build(t["net"], ds.in_shape, ds.mean, ds.std, width=t["width"], init=t["init"]).to(device).eval()
    net = Network.from_module(model)
    theta0 = net.layout.flatten(net.params()).detach()[0].clone()
    step_s = {}
    for relax in spec["relaxations"]:
        for opt in spec["optimizers"]:
            o = _optimizer(spec, opt, theta0.clone())
            counter = iter(range(reps + 1))
            loss = population_loss(net, x, y, eps=t["eps"], relaxation=relax, robust_weight=1.0)
            step_s[(opt, relax)] = best_of(lambda: o.step(loss, next(counter)), reps)
    xt, yt = ds.test.x[:n_images].to(device), ds.test.y[:n_images].to(device)
    cert_s = {}
    for relax in paradox.RELAXATIONS:
        def bound():
            with torch.no_grad():
                compute_bounds(net, xt, t["eps"], method=relax, labels=yt)
        cert_s[relax] = best_of(bound, reps) / n_images
    ev = spec["eval"]
    pgd_s = best_of(lambda: pgd_robust(model, xt, yt, t["eps"], steps=ev["pgd_steps"], restarts=ev["pgd_restarts"]),
                   1) / n_images
    return step_s, cert_s, pgd_s, n_train


def main(spec: dict, workers: int) -> int:
    step_s, cert_s, pgd_s, n_train = measure(spec)
    est = paradox.estimate_seconds(step_s, cert_s, pgd_s, spec, n_train, workers)
    t = spec["train"]
    print(f"preset {spec['preset']}: {t['net']} width {t['width']}, eps {t['eps']:g}, batch {t['batch_size']}, "
          f"{n_train} training images, {t['epochs']} epochs (PGPE after its warm start: %d epoch(s) on %d images)"
          % paradox.pgpe_schedule(spec, n_train))
    print("step time at the target eps, initial weights (ms):")
    for (opt, relax), s in step_s.items():
        print(f"  {opt:>5} {relax:<10} {1000 * s:9.1f}   -> cell {est['cells_s'][paradox.cell_name(opt, relax)] / 60:7.1f} min")
    print("evaluation per image (ms): " + ", ".join(f"{r} {1000 * s:.2f}" for r, s in cert_s.items())
          + f", PGD {1000 * pgd_s:.2f}; per network {est['eval_per_network_s'] / 60:.1f} min")
    print(f"total {est['total_cpu_s'] / 3600:.2f} h of one core; with {workers} worker(s) >= {est['wall_s'] / 3600:.2f} h")
    return 0
