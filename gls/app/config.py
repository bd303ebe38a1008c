"""Options of ``python -m gls.train``: the typed run config, defaults, named presets, config files and
the command line.

Precedence, lowest first: built-in defaults, the default run (:data:`DEFAULT_RUN`, only when no preset
is chosen), the method's defaults, a preset (``--preset`` or a ``preset`` key in the file), the config
file (``--config``, TOML or JSON, keys spelled as the options, with - or _), the command line. With
``--resume`` the run's saved config replaces the first five and only options given on the command line
override it. :func:`resolve` returns a :class:`TrainConfig`;
run directories and checkpoints keep it as the plain dict :meth:`TrainConfig.as_dict` (plus the
launcher's ``world_size``), which config files and ``--resume`` read back.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gls.bounds import METHODS as RELAXATIONS
from gls.memory import parse_size
from gls.problem import method_name, method_names
from gls.app.models import INITS, NETS
from gls.app.schedule import SCHEDULES
from gls.app.study import paradox
from gls.smoothing import CENTER_OPTIMIZERS

TRAIN_METHODS = ("pgpe", "rgs", "grad")


class ConfigError(ValueError):
    """A bad option value or config file; the message is one line for the user."""


@dataclass
class TrainConfig:
    """The resolved options of one training run (one field per option of ``python -m gls.train``).

    The field defaults are the plain defaults under a preset: the small MLP, plain-gradient IBP training
    on all of MNIST; without a preset the default run (DEFAULT_RUN) replaces some of them. Fields whose
    default is None and that are marked "method" take the training method's default (METHOD_DEFAULTS)
    in :func:`resolve`; after it, they are set.
    """

    dataset: str = "mnist"
    data_dir: str | None = None
    net: str = "mlp"
    width: int | None = None
    init: str = "ibp"
    method: str = "grad"
    relaxation: str = "ibp"
    eps: float = 0.1
    train_eps: float | None = None  # None: eps
    epochs: int = 20
    batch_size: int = 128
    population: int | None = None  # method
    sigma: float | None = None  # method
    lr: float | None = None  # method
    optimizer: str | None = None  # method
    eps_schedule: str = "smooth"
    eps_start_epoch: int = 0
    eps_end_epoch: int = 6
    robust_weight: float = 1.0
    lr_milestones: list[int] = field(default_factory=lambda: [14, 17])
    lr_decay: float = 0.2
    grad_clip: float | None = 10.0
    antithetic: bool = False
    adapt_sigma: bool = True
    stdev_lr: float = 0.1
    stdev_max_change: float = 0.2
    max_speed: float | None = None
    pair_chunk: int = 0
    member_chunk: int = 0
    sample_chunk: int = 0
    max_memory: str | None = None
    checkpoint_every: float = 300.0
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    backend: str | None = None
    out: str | None = None
    init_from: str | None = None
    certify: list[str] = field(default_factory=lambda: ["ibp", "crown-ibp", "deeppoly"])
    pgd_steps: int = 40
    pgd_restarts: int = 1
    eval_batch_size: int = 256
    train_subset: int | None = None
    val_subset: int | None = 1000
    test_subset: int | None = None
    halt_after_epoch: int | None = None
    progress: bool | None = None
    dist_timeout: float = 600.0
    sync_check_every: int = 100
    preset: str | None = None  # the preset it was resolved with (recorded, not an option of a file)

    def as_dict(self) -> dict:
        """The config as a plain dict (what config.json and checkpoints hold)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a dict of field values (a resolved dict, or a saved one: keys that are no
        field, such as the launcher's world_size, are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# The plain defaults, {option: default} (preset is recorded, not an option).
DEFAULTS: dict = {k: v for k, v in TrainConfig().as_dict().items() if k != "preset"}


def _default_run() -> dict:
    """The options of the default run: the ``quick`` paradox study's RGS-DeepPoly cell (its budget and
    evaluation; RGS's samples and sigma are METHOD_DEFAULTS["rgs"], the preset's values), so that its
    final table can show that study's plain-gradient cells beside it (gls.app.baseline). Its width goes
    with its network: another --net takes that network's own width."""
    quick = paradox.PRESETS["quick"]
    train = {k: v for k, v in quick["train"].items() if k in DEFAULTS and k not in paradox.CELL_ONLY}
    ev = quick["eval"]
    return {**train, "method": "rgs", "relaxation": "deeppoly", "test_subset": ev["subset"],
            "pgd_steps": ev["pgd_steps"], "pgd_restarts": ev["pgd_restarts"], "certify": list(paradox.RELAXATIONS)}


DEFAULT_RUN: dict = _default_run()

METHOD_DEFAULTS = {
    "grad": {"population": 1, "sigma": 0.0, "lr": 1e-3, "optimizer": "adam"},
    "rgs": {"population": 4, "sigma": 1e-2, "lr": 1e-3, "optimizer": "adam"},
    "pgpe": {"population": 16, "sigma": 1e-2, "lr": 1e-2, "optimizer": "clipup"},
}

# CTBench's standard settings (epochs, eps ramp, lr decay); the network is cnn7 unless --net says.
PRESETS = {
    "mnist-0.1": {"dataset": "mnist", "eps": 0.1, "net": "cnn7", "epochs": 70, "batch_size": 256,
                  "eps_start_epoch": 0, "eps_end_epoch": 20, "lr": 5e-4, "lr_milestones": [50, 60]},
    "mnist-0.3": {"dataset": "mnist", "eps": 0.3, "net": "cnn7", "epochs": 70, "batch_size": 256,
                  "eps_start_epoch": 0, "eps_end_epoch": 20, "lr": 5e-4, "lr_milestones": [50, 60]},
    "cifar10-2/255": {"dataset": "cifar10", "eps": 2 / 255, "net": "cnn7", "epochs": 160, "batch_size": 128,
                      "eps_start_epoch": 1, "eps_end_epoch": 81, "lr": 5e-4, "lr_milestones": [120, 140]},
    "cifar10-8/255": {"dataset": "cifar10", "eps": 8 / 255, "net": "cnn7", "epochs": 160, "batch_size": 128,
                      "eps_start_epoch": 1, "eps_end_epoch": 81, "lr": 5e-4, "lr_milestones": [120, 140]},
}

# The machine each preset is sized for (gls.memory fits every step into --max-memory by chunking, so
# these machines run them without running out of memory; how long they take is in the README).
PRESET_MACHINES = {
    "mnist-0.1": "a 24 GB machine (CPU or GPU); a GPU for any relaxation beyond IBP",
    "mnist-0.3": "a 24 GB machine (CPU or GPU); a GPU for any relaxation beyond IBP",
    "cifar10-2/255": "a GPU with 24 GB or more",
    "cifar10-8/255": "a GPU with 24 GB or more",
}

_HIDDEN = {"train_subset", "val_subset", "test_subset", "halt_after_epoch"}


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def number(s: str) -> float:
    s = s.strip()
    if "/" in s:  # 2/255
        num, den = s.split("/", 1)
        if float(den) == 0:
            raise ValueError(f"division by zero in {s!r}")
        return float(num) / float(den)
    return float(s)


def _int_list(s: str) -> list[int]:
    return [int(v) for v in s.replace(",", " ").split()] if s.strip() else []


def _str_list(s: str) -> list[str]:
    return [v for v in s.replace(",", " ").split() if v]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one readable line, no usage dump
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m gls.train", argument_default=argparse.SUPPRESS, allow_abbrev=False,
                description="Certified training with Gaussian loss smoothing (PGPE, RGS) or plain gradients. "
                            "Without arguments: RGS with DeepPoly on real MNIST at eps 0.1 (3-5 minutes on one "
                            "core), then the evaluation table beside plain gradients at the same budget.")
    a = p.add_argument
    a("--config", metavar="FILE", help="TOML or JSON file with option values (same names as the options)")
    a("--preset", choices=sorted(PRESETS), help="a standard CTBench setting (dataset, eps, schedule, epochs); "
                                                "each states the machine it is sized for when a run starts")
    a("--dataset", help="mnist | cifar10 (default mnist)")
    a("--data-dir", help="directory with MNIST IDX files or the CIFAR-10 python batches")
    a("--net", help=f"network: {', '.join(NETS)} (default: the default run's paradox_conv at width 8; "
                                f"mlp under a preset)")
    a("--width", type=int, help="base width of the network (default: CTBench's for that network; 8 for the "
                              "default run's paradox_conv)")
    a("--init", help="weight initialisation: ibp (default; Shi et al. 2021, keeps IBP boxes tight at the "
                     "start) | default (PyTorch's)")
    a("--method", help="pgpe | rgs | grad (default rgs; grad under a preset: plain gradients = RGS with "
                       "sigma 0, one sample)")
    a("--relaxation", help=f"bound used in the loss: {', '.join(RELAXATIONS)} (default deeppoly; ibp under a preset)")
    a("--eps", type=number, help="test radius in pixel space, e.g. 0.1 or 2/255 (default 0.1)")
    a("--train-eps", type=number, help="training radius (default: --eps)")
    a("--epochs", type=int, help="number of epochs")
    a("--batch-size", type=int, help="mini-batch size")
    a("--population", type=int, help="PGPE population (even) or RGS samples (default 16 / 4 / 1)")
    a("--sigma", type=float, help="smoothing stdev (PGPE initial stdev; RGS noise scale)")
    a("--lr", type=float, help="learning rate (ClipUp step for PGPE)")
    a("--optimizer", help="PGPE: clipup | adam; RGS/grad: any torch.optim name (adam, sgd, adamw, ...)")
    a("--eps-schedule", help="smooth | linear eps ramp")
    a("--eps-start-epoch", type=int, help="epoch at which the eps ramp starts")
    a("--eps-end-epoch", type=int, help="epoch at which eps reaches --train-eps")
    a("--robust-weight", type=float, help="weight w of the robust loss: (1-w) CE + w robust (ramped with eps)")
    a("--lr-milestones", type=_int_list, help="epochs at which the lr is multiplied by --lr-decay, e.g. 50,60")
    a("--lr-decay", type=float, help="lr decay factor at each milestone (default 0.2)")
    a("--grad-clip", type=float, help="RGS/grad: clip the gradient norm (<= 0: off; default 10)")
    a("--antithetic", type=_bool, help="RGS: antithetic noise pairs (true/false)")
    a("--adapt-sigma", type=_bool, help="PGPE: adapt the stdev (true/false; default true)")
    a("--stdev-lr", type=float, help="PGPE: stdev learning rate (default 0.1)")
    a("--stdev-max-change", type=float, help="PGPE: max relative stdev change per step (default 0.2)")
    a("--max-speed", type=float, help="PGPE ClipUp max speed (default 2 * lr)")
    a("--pair-chunk", type=int, help="PGPE: evaluate the population this many antithetic pairs at a time "
                                     "(memory O(d) for large networks; default 0 = all in one pass)")
    a("--member-chunk", type=int, help="RGS: samples (perturbed copies) per backward pass (default 0: planned to fit "
                                       "--max-memory)")
    a("--sample-chunk", type=int, help="mini-batch samples per pass, the pieces' gradients added up (default 0: "
                                       "planned to fit --max-memory)")
    a("--max-memory", help="memory one training step may use, with a unit: 20GB, 1.5GiB, 800M (default: 70%% of the available RAM, "
                           "85%% of the free GPU memory); chunks are chosen to fit, or the run is refused at once, and each bound "
                           "pass back-substitutes its rows in blocks within it (under autograd a graph that does not "
                           "fit is recomputed block by block in the backward pass)")
    a("--checkpoint-every", type=float, help="seconds between checkpoints inside an epoch (default 300; "
                                             "last.pt is also written at every epoch end)")
    a("--seed", type=int, help="random seed (init, data order, noise)")
    a("--device", help="torch device (default cpu)")
    a("--threads", type=int, help="CPU threads for torch (default 1: on a shared machine torch's busy-waiting "
                                  "threads ran 10-25x slower than one thread; 0 = torch's default)")
    a("--backend", help="gls.ops backend for the bounds (default: automatic)")
    a("--out", help="run directory (default runs/<dataset>-<net>-<method>-<relaxation>-eps<eps>-s<seed>)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where its last checkpoint left off")
    a("--init-from", metavar="CKPT", help="start from the weights of a checkpoint (e.g. a grad warm-up run)")
    a("--certify", type=_str_list, help="relaxations for the final certification (default all four; "
                                         "ibp,crown-ibp,deeppoly under a preset)")
    a("--pgd-steps", type=int, help="PGD steps in the final evaluation (default 40)")
    a("--pgd-restarts", type=int, help="PGD restarts in the final evaluation (default 1)")
    a("--eval-batch-size", type=int, help="batch size of the evaluations")
    a("--progress", type=_bool, help="progress bars (default: when stderr is a terminal)")
    a("--dist-timeout", type=float, help="under torchrun: seconds a rank waits for the others in a collective "
                                         "before the job stops with an error (default 600)")
    a("--sync-check-every", type=int, help="under torchrun: compare a checksum of the centre across the ranks "
                                           "every this many steps (and before every checkpoint; 0 = only then; "
                                           "default 100)")
    for name in sorted(_HIDDEN):  # for tests and quick runs
        a("--" + name.replace("_", "-"), type=int, help=argparse.SUPPRESS)
    return p


def check_device(device) -> str:
    """A torch device string that this machine can use, else ConfigError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(device)


# Options that fix the network, its data and the optimiser's state: a resumed run cannot change them.
_FIXED_ON_RESUME = ("dataset", "net", "width", "init", "method", "population", "optimizer", "antithetic", "seed")


def _read_file(path: str) -> dict:
    f = Path(path)
    if not f.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = tomllib.loads(f.read_text()) if f.suffix.lower() == ".toml" else json.loads(f.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse config file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a table of option values")
    out = {}
    for k, v in raw.items():
        key = k.replace("-", "_")
        if key == "world_size":  # recorded in a run's config.json; the launcher sets it
            continue
        if key not in DEFAULTS and key != "preset":
            raise ConfigError(f"config file {path}: unknown option {k!r}")
        out[key] = v
    return out


def parse_args(argv) -> dict:
    """Only the options given on the command line, as {snake_case: value}."""
    return vars(parser().parse_args(argv))


def resolve(cli: dict, saved: dict | None = None) -> TrainConfig:
    """The full config from the command-line options `cli` (and a resumed run's `saved` config dict)."""
    cli = dict(cli)
    cli.pop("resume", None)
    if saved is not None:
        if "config" in cli or "preset" in cli:
            raise ConfigError("--config/--preset cannot be combined with --resume: the run's saved config is used "
                              "(override single options on the command line)")
        changed = [k for k in _FIXED_ON_RESUME if k in cli and cli[k] != saved.get(k)]
        if changed:
            k = changed[0]
            raise ConfigError(f"{_flag(k)} cannot change when resuming (the run has {saved.get(k)!r}, got {cli[k]!r})")
        cfg = {**DEFAULTS, **saved, "halt_after_epoch": None}
        cfg.update({k: v for k, v in cli.items() if k not in ("config", "preset")})
        return validate(cfg)
    file = _read_file(cli.pop("config")) if "config" in cli else {}
    preset = cli.pop("preset", None) or file.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(sorted(PRESETS))}")
    base = dict(DEFAULTS) if preset is not None else {**DEFAULTS, **DEFAULT_RUN}
    if cli.get("net", file.get("net", base["net"])) != base["net"]:  # the width goes with its network
        base["width"] = DEFAULTS["width"]
    method = cli.get("method", file.get("method", base["method"]))
    preset_values = dict(PRESETS.get(preset, {}))
    if method == "pgpe":  # the presets' learning rates are Adam's; ClipUp steps are on another scale
        preset_values.pop("lr", None)
    chosen = {**preset_values, **file, **cli}
    cfg = {**base, **METHOD_DEFAULTS.get(method, {}), **chosen}
    cfg["preset"] = preset
    return validate(cfg)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _number(cfg: dict, key: str, *, lo: float = 0.0, strict: bool = False, integer: bool = False,
            optional: bool = False, hi: float = math.inf) -> None:
    """cfg[key] is a finite number in [lo, hi] (> lo if strict), an int if `integer`, or None if `optional`."""
    v = cfg[key]
    if v is None and optional:
        return
    if isinstance(v, str) and not integer:  # config files may spell eps as "2/255"
        try:
            v = cfg[key] = number(v)
        except ValueError:
            pass
    kind = "an integer" if integer else "a number"
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    ok = ok and not isinstance(v, bool) and math.isfinite(v) and (v > lo if strict else v >= lo) and v <= hi
    if not ok:
        bound = f"> {lo:g}" if strict else f">= {lo:g}"
        upper = "" if hi == math.inf else f" and <= {int(hi) if integer else f'{hi:g}'}"
        raise ConfigError(f"{_flag(key)} must be {kind} {bound}{upper}, got {v!r}")


def _choice(cfg: dict, key: str, choices, what: str) -> None:
    if cfg[key] not in choices:
        raise ConfigError(f"unknown {what} {cfg[key]!r}; expected one of {', '.join(choices)}")


def validate(cfg: dict) -> TrainConfig:
    """The TrainConfig of the merged option values `cfg` after checking every value and filling the
    derived ones (train_eps, canonical relaxation names). Raises ConfigError with one line."""
    cfg["dataset"] = str(cfg["dataset"]).lower().replace("-", "")
    try:
        cfg["relaxation"] = method_name(cfg["relaxation"])
    except (TypeError, ValueError):
        raise ConfigError(f"unknown relaxation {cfg['relaxation']!r}; expected one of {', '.join(RELAXATIONS)}") from None
    _choice(cfg, "dataset", ("mnist", "cifar10"), "dataset")
    _choice(cfg, "net", NETS, "net")
    _choice(cfg, "init", INITS, "init")
    _choice(cfg, "method", TRAIN_METHODS, "method")
    _choice(cfg, "eps_schedule", SCHEDULES, "eps schedule")
    check_device(cfg["device"])
    _number(cfg, "eps")
    _number(cfg, "train_eps", optional=True)
    if cfg["train_eps"] is None:
        cfg["train_eps"] = cfg["eps"]
    for key in ("epochs", "batch_size", "population", "eval_batch_size", "pgd_restarts"):
        _number(cfg, key, lo=1, integer=True)
    for key in ("pgd_steps", "threads", "eps_start_epoch", "eps_end_epoch", "pair_chunk", "member_chunk",
                "sample_chunk", "sync_check_every"):
        _number(cfg, key, integer=True)
    for key in ("width", *sorted(_HIDDEN)):
        _number(cfg, key, lo=1, integer=True, optional=True)
    _number(cfg, "seed", integer=True, hi=2 ** 32 - 1)
    _number(cfg, "lr", strict=True)
    _number(cfg, "lr_decay", strict=True)
    _number(cfg, "dist_timeout", strict=True)
    _number(cfg, "sigma")
    _number(cfg, "robust_weight", hi=1.0)
    _number(cfg, "checkpoint_every")
    if cfg["max_memory"] is not None:
        try:
            parse_size(cfg["max_memory"])
        except ValueError as e:
            raise ConfigError(f"--max-memory: {e}") from None

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    pop, method = cfg["population"], cfg["method"]
    if method == "pgpe":
        need(cfg["sigma"] > 0, "--sigma must be > 0 for pgpe")
        need(pop >= 2 and pop % 2 == 0, f"--population must be even and >= 2 for pgpe (antithetic pairs), got {pop}")
        need(cfg["optimizer"] in CENTER_OPTIMIZERS,
             f"--optimizer for pgpe must be clipup or adam, got {cfg['optimizer']!r}")
    else:
        need(cfg["optimizer"] != "clipup", "--optimizer clipup is PGPE's; use a torch optimizer (adam, sgd, ...)")
        need(not cfg["antithetic"] or pop % 2 == 0, "--antithetic needs an even --population")
    if method == "grad":
        need(cfg["sigma"] == 0 and pop == 1,
             "--method grad is plain gradient training: it takes no --sigma/--population (use --method rgs)")
    need(cfg["eps_start_epoch"] <= cfg["eps_end_epoch"], "need --eps-start-epoch <= --eps-end-epoch")
    try:
        method_names(cfg["certify"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--certify: {e}") from None
    return TrainConfig.from_dict(cfg)


def default_out(cfg: TrainConfig) -> str:
    """The run directory of a run without --out: runs/<dataset>-<net>-<method>-<relaxation>-eps<eps>-s<seed>."""
    return f"runs/{cfg.dataset}-{cfg.net}-{cfg.method}-{cfg.relaxation}-eps{cfg.eps:g}-s{cfg.seed}"
