"""curves.png of a training run: losses, accuracies at the target eps, and the schedules, per epoch."""
from __future__ import annotations

import os
from pathlib import Path

from gls.app.config import TrainConfig


def plot_curves(history: list[dict], path: Path, cfg: TrainConfig, best_epoch: int | None) -> None:
    """Draw `history` (metrics.jsonl rows) to `path` atomically.

    Panels: natural and robust training loss (population means); validation natural and certified
    accuracy at the target eps with the training accuracies; the eps ramp and learning rate, and sigma
    for the smoothing methods only. The best epoch and the lr milestones are marked on every panel; the
    title names the method, relaxation, network, data set and eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.plot(ep, [h["train_natural_loss"] for h in history], label="natural (cross-entropy)")
    ax.plot(ep, [h["train_robust_loss"] for h in history], label=f"robust ({cfg.relaxation}, training eps)")
    if all(h["train_natural_loss"] > 0 and h["train_robust_loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.set_title("training loss")

    ax = axes[1]
    val = history[0].get("val_samples", "")
    ax.plot(ep, [100 * h["val_natural_acc"] for h in history], label=f"val natural ({val} images)")
    ax.plot(ep, [100 * h["val_certified_acc"] for h in history],
            label=f"val certified ({cfg.relaxation}, eps {cfg.eps:g})")
    ax.plot(ep, [100 * h["train_natural_acc"] for h in history], "--", label="train natural")
    cert = [h["train_certified_acc"] for h in history]
    ax.plot(ep, [float("nan") if c is None else 100 * c for c in cert], "--", label="train certified (training eps)")
    ax.set_ylabel("%")
    ax.set_title("accuracy")

    ax = axes[2]
    ax.plot(ep, [h["eps"] for h in history], label="training eps (end of epoch)")
    ax.set_ylabel("eps")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["lr"] for h in history], "g-.", label="learning rate")
    if cfg.method != "grad":
        ax2.plot(ep, [h["sigma_mean"] for h in history], "r:", label="sigma (mean)")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7, loc="lower right")
    ax.set_title("schedule")

    for ax in axes:
        for m in cfg.lr_milestones or []:
            if ep and m < ep[-1]:  # the lr drops after epoch m (0-based epoch m is 1-based m + 1)
                ax.axvline(m + 0.5, color="0.6", linewidth=0.8, linestyle=":")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="k", linewidth=0.8, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch (dotted: lr milestones)")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{cfg.method} / {cfg.relaxation}: {cfg.net} on {cfg.dataset}, eps {cfg.eps:g}"
                 + (f", population {cfg.population}, sigma {cfg.sigma:g}" if cfg.method != "grad" else ""))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
