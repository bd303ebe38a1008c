"""The paradox study: optimizer {grad, rgs, pgpe} x relaxation {ibp, hbox, crown-ibp, deeppoly}.

Jovanovic et al. ("On the Paradox of Certified Training", TMLR 2022) found that, trained with plain
gradients, looser relaxations give better certified networks than tighter ones; Balauca et al. (GLS,
arXiv 2403.07095) that with Gaussian Loss Smoothing (PGPE, RGS) the tighter ones win. Every cell of
the grid is an ordinary ``gls.train`` run directory with the same network, data, eps schedule and
budget; every final network (``last.pt``) is then evaluated by the same certifier on the same test
images (:mod:`gls.app.study.evaluate`).

Budget rule (stated in results.md too). A *bound evaluation* is one network (population member)
bounded on one image. grad trains E epochs on N images: E*N evaluations; RGS the same epochs with N_s
copies: E*N*N_s. PGPE from scratch did not learn on this CPU (paradox_conv width 8, IBP at eps 0.3,
population 32, 120 steps of 64 images: natural accuracy stayed at 10 %, the robust loss rose from 4.4
to 9.9 as ClipUp's fixed-length, mostly-noise steps random-walked the weights). Far from an optimum it
does learn (width 4, population 32, ClipUp lr 0.03: the IBP loss of a DeepPoly-trained network fell
7.58 -> 6.88 in 40 steps; population 128 at lr 0.01: -> 6.82), so a PGPE cell starts from the final
weights of the grad cell of the same relaxation (``--init-from``) and then trains at the full eps with
population P on the first n_p training images for E_p epochs, E_p * n_p * P = E*N*(N_s - 1)
(:func:`pgpe_schedule`): warm start plus PGPE spend E*N*N_s evaluations, the RGS cell's number.
results.json lists every cell's count.
Measured limit of this: from a trained network PGPE at population 32-128 (d = 79k) did not improve
its loss on this CPU; it drifted up slowly (width 8, IBP at eps 0.1, 40 steps of 64 images: validation
loss 1.301 -> 1.310 at sigma 1e-3, lr 3e-3; -> 1.361 at lr 1e-2; -> 1.566 at sigma 1e-2, lr 3e-2;
population 128 at lr 3e-3: -> 1.309; CROWN-IBP 1.120 -> 1.127), while 80 plain-gradient steps from the
same weights reached 1.122; width 2 (d = 4.9k), population 64: 1.671 -> 1.681, grad -> 1.493). The cpu
preset therefore takes the smallest-drift setting (sigma 1e-3, lr 3e-3), and its PGPE column is to be
read against the grad column it starts from: at this budget it measures PGPE's drift, not what
smoothing can do.

Presets (``--preset``): ``paper`` is the published setting (paradox paper's CONV network, eps 0.3, 200
epochs; for a GPU); ``cpu`` is sized for a 2-core CPU within two hours (40 minutes measured; derivation:
the README's "The paradox study"); ``quick`` is the budget of ``python -m gls.train``'s default run
(3-5 minutes per RGS-DeepPoly cell on one core), whose grad cells are that run's plain-gradient baseline.
``--set section.key=value`` overrides any entry (sections: train, rgs, pgpe, eval, sweep).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from gls.problem import method_names

RELAXATIONS = ("ibp", "hbox", "crown-ibp", "deeppoly")
OPTIMIZERS = ("grad", "rgs", "pgpe")

# The authors' published table (certified accuracy after plain-gradient training; setting believed to be
# MNIST eps = 0.3 on their CONV network, 200 epochs, lr 5e-4), drawn as reference markers.
PUBLISHED_GRAD = {"ibp": 0.868, "hbox": 0.837, "crown-ibp": 0.754, "deeppoly": 0.702}
PUBLISHED_SETTING = "paradox paper, grad, MNIST eps 0.3, CONV, 200 epochs"

_COMMON_TRAIN = {"dataset": "mnist", "init": "ibp", "eps_schedule": "smooth", "robust_weight": 1.0,
                 "lr_decay": 0.2, "seed": 0, "threads": 1, "progress": False,
                 # the run's own final table stays cheap (natural + IBP); the study's evaluation compares
                 "certify": ["ibp"], "pgd_steps": 0}

# Train settings of a study cell that only the study wants (cheap per-run tables, one thread per worker,
# no progress bars): the default run (gls.app.config.DEFAULT_RUN) does not take them from the quick preset.
CELL_ONLY = ("threads", "progress", "certify", "pgd_steps")

PRESETS: dict[str, dict] = {
    # the published setting; the paper's batch size, eps ramp and lr decay are not known here, so these
    # are CTBench-like choices. RGS/PGPE values are the CPU ones (population scaled up): run --sweep there.
    "paper": {
        "train": {**_COMMON_TRAIN, "net": "paradox_conv", "width": 16, "eps": 0.3, "epochs": 200,
                  "batch_size": 100, "lr": 5e-4, "eps_start_epoch": 10, "eps_end_epoch": 60,
                  "lr_milestones": [130, 170], "train_subset": None, "val_subset": 1000, "device": "cuda",
                  "eval_batch_size": 256},
        "rgs": {"population": 8, "sigma": 1e-2},
        "pgpe": {"population": 256, "sigma": 1e-2, "lr": 3e-2, "optimizer": "clipup", "adapt_sigma": False},
        "eval": {"subset": None, "pgd_steps": 40, "pgd_restarts": 1, "batch_size": 256},
        "sweep": {"relaxation": "deeppoly", "epochs": 20,
                  "rgs": [{"sigma": s} for s in (3e-3, 3e-2)] + [{"population": n} for n in (4, 16)]
                  + [{"lr": lr} for lr in (2.5e-4, 1e-3)],
                  "pgpe": [{"sigma": s} for s in (3e-3, 3e-2)] + [{"population": n} for n in (64, 512)]
                  + [{"lr": lr} for lr in (1e-2, 1e-1)]},
    },
    # a 2-core CPU within two hours (40 minutes measured): the derivation is in the README ("The paradox study")
    "cpu": {
        "train": {**_COMMON_TRAIN, "net": "paradox_conv", "width": 8, "eps": 0.1, "epochs": 8,
                  "batch_size": 64, "lr": 1e-3, "eps_start_epoch": 0, "eps_end_epoch": 4,
                  "lr_milestones": [6], "train_subset": 10000, "val_subset": 500, "device": "cpu",
                  "eval_batch_size": 256},
        "rgs": {"population": 4, "sigma": 1e-2},
        "pgpe": {"population": 32, "sigma": 1e-3, "lr": 3e-3, "optimizer": "clipup", "adapt_sigma": False},
        "eval": {"subset": 1000, "pgd_steps": 40, "pgd_restarts": 1, "batch_size": 256},
        "sweep": {"relaxation": "deeppoly", "epochs": 2,
                  "rgs": [{"sigma": s} for s in (3e-3, 3e-2)] + [{"population": n} for n in (2, 8)],
                  "pgpe": [{"sigma": s} for s in (3e-4, 3e-3)] + [{"lr": 1e-2}, {"population": 64}]},
    },
}
# the cpu preset at half the epochs: python -m gls.train's default run is its rgs-deeppoly cell
# (gls.app.config.DEFAULT_RUN, 3-5 minutes on one core) and its grad cells are the baseline that
# run's final table shows (gls.app.baseline)
PRESETS["quick"] = {**PRESETS["cpu"],
                    "train": {**PRESETS["cpu"]["train"], "epochs": 4, "eps_end_epoch": 2, "lr_milestones": [3]},
                    "sweep": {**PRESETS["cpu"]["sweep"], "epochs": 1}}

# The training settings that make two runs' budgets equal: gls.app.baseline shows a study's grad cells
# beside a run only when these (and the evaluation) agree.
BUDGET_KEYS = ("dataset", "net", "width", "init", "eps", "epochs", "batch_size", "eps_schedule", "eps_start_epoch",
               "eps_end_epoch", "lr_milestones", "lr_decay", "robust_weight", "train_subset", "seed")

BUDGET_RULE = ("same network, data, eps schedule and epochs E for grad and RGS (E*N and E*N*N_s bound evaluations, "
               "N_s = RGS samples); PGPE warm-starts from the grad cell of its relaxation and adds E_p epochs at "
               "population P over the first n_p training images, E_p*n_p*P = E*N*(N_s-1), so warm start + PGPE = "
               "the RGS cell's E*N*N_s evaluations (one evaluation = one member bounded on one image).")

SECTIONS = ("train", "rgs", "pgpe", "eval", "sweep")


class StudyError(ValueError):
    """A bad study option; the message is one line for the user."""


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve(preset: str, overrides: list[str] = (), optimizers=None, relaxations=None) -> dict:
    """The study spec: preset `preset` with `overrides` ("section.key=value", value as JSON or a string)
    applied, and the grid's optimizers and relaxations (default: all)."""
    if preset not in PRESETS:
        raise StudyError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    spec = copy.deepcopy(PRESETS[preset])
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in SECTIONS or not name:
            raise StudyError(f"--set expects SECTION.KEY=VALUE with SECTION one of {', '.join(SECTIONS)}, got {item!r}")
        spec[section][name.replace("-", "_")] = _parse_value(value)
    spec["preset"] = preset
    spec["optimizers"] = _subset(optimizers, OPTIMIZERS, "optimizer")
    try:
        spec["relaxations"] = _subset(relaxations if relaxations is None else method_names(relaxations), RELAXATIONS,
                                      "relaxation")
    except ValueError as e:  # an unknown name (method_names) or none at all (_subset)
        raise StudyError(str(e)) from None
    for key in ("epochs", "batch_size"):
        if not isinstance(spec["train"][key], int) or spec["train"][key] < 1:
            raise StudyError(f"train.{key} must be an integer >= 1, got {spec['train'][key]!r}")
    for section, key in (("rgs", "population"), ("pgpe", "population")):
        if not isinstance(spec[section][key], int) or spec[section][key] < 1:
            raise StudyError(f"{section}.{key} must be an integer >= 1, got {spec[section][key]!r}")
    return spec


def _subset(chosen, allowed, what) -> list[str]:
    if chosen is None:
        return list(allowed)
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise StudyError(f"unknown {what}(s) {', '.join(bad) or '(none given)'}; expected some of {', '.join(allowed)}")
    return list(dict.fromkeys(chosen))


def cell_name(optimizer: str, relaxation: str) -> str:
    return f"{optimizer}-{relaxation}"


def pgpe_schedule(spec: dict, n_train: int) -> tuple[int, int]:
    """(epochs, images per epoch) of a PGPE cell after its warm start, so that warm start + PGPE spend the
    RGS cell's bound evaluations: E_p epochs over the first n_p training images with
    E_p * n_p * P = E * N * (N_s - 1), E_p = ceil(T / N) for T = E * N * (N_s - 1) / P."""
    t, n_s, p = spec["train"], spec["rgs"]["population"], spec["pgpe"]["population"]
    total = t["epochs"] * n_train * (n_s - 1) / p
    epochs = max(1, math.ceil(total / n_train))
    return epochs, max(1, min(n_train, round(total / epochs)))


def bound_evaluations(spec: dict, optimizer: str, n_train: int) -> int:
    """Bound evaluations (member x image) of a cell's training, the PGPE warm start included."""
    e = spec["train"]["epochs"]
    if optimizer == "grad":
        return e * n_train
    if optimizer == "rgs":
        return e * n_train * spec["rgs"]["population"]
    epochs, images = pgpe_schedule(spec, n_train)
    return e * n_train + epochs * images * spec["pgpe"]["population"]


def cell_config(spec: dict, optimizer: str, relaxation: str, runs_dir: Path, n_train: int,
                epochs: int | None = None) -> dict:
    """The gls.train options (a --config file) of one cell (`n_train`: the grid's training images);
    `epochs` overrides the epochs (sweeps)."""
    cfg = dict(spec["train"], method=optimizer, relaxation=relaxation)
    if optimizer == "rgs":
        cfg.update(population=spec["rgs"]["population"], sigma=spec["rgs"]["sigma"],
                   lr=spec["rgs"].get("lr", cfg["lr"]))
    elif optimizer == "pgpe":
        p = spec["pgpe"]
        pgpe_epochs, images = pgpe_schedule(spec, n_train)
        # warm start: the grad cell's final weights, then PGPE at the full eps (no second ramp) on the
        # first `images` training images
        cfg.update(population=p["population"], sigma=p["sigma"], lr=p["lr"], optimizer=p["optimizer"],
                   adapt_sigma=p["adapt_sigma"], epochs=pgpe_epochs, train_subset=images, eps_start_epoch=0,
                   eps_end_epoch=0, lr_milestones=[],
                   init_from=str(runs_dir / cell_name("grad", relaxation) / "last.pt"))
    if epochs is not None:
        cfg["epochs"] = epochs
    return cfg


def estimate_seconds(step_s: dict, cert_s: dict, pgd_s: float, spec: dict, n_train: int, workers: int) -> dict:
    """The budget formula. A cell trains in epochs * ceil(N / B) * t_step + epochs * n_val * t_cert(relaxation)
    (PGPE: its own epochs and images)
    seconds (t_step measured at the target eps: an upper bound for the ramp's cheaper steps; the second term
    is the per-epoch validation); every network is then evaluated in n_test * (sum of t_cert + t_pgd). The
    study's wall time is the total divided by the workers (perfect packing: a lower bound)."""
    t = spec["train"]
    cells = {}
    for (opt, relax), secs in step_s.items():
        epochs, images = pgpe_schedule(spec, n_train) if opt == "pgpe" else (t["epochs"], n_train)
        steps = epochs * math.ceil(images / t["batch_size"])
        cells[cell_name(opt, relax)] = steps * secs + epochs * t["val_subset"] * cert_s[relax]
    n_test = spec["eval"]["subset"] or 10000
    per_net = n_test * (sum(cert_s.values()) + pgd_s)
    total = sum(cells.values()) + per_net * len(cells)
    return {"cells_s": cells, "eval_per_network_s": per_net, "total_cpu_s": total, "wall_s": total / max(workers, 1)}
