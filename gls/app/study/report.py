"""A study's outputs: results.json (everything), results.md (the tables and the verdict) and results.png.

Certified accuracy is reported two ways, both from the same evaluation: DeepPoly alone, and best-of
(a test image counts when any relaxation certifies it). The headline ("certified") is best-of. The
verdict lines are computed from the table, never written by hand: the paradox holds under grad when
grad-IBP certifies at least as much as grad-DeepPoly; GLS reverses it when RGS or PGPE with DeepPoly
certifies at least as much as grad with IBP.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from gls.app.checkpoint import write_json, write_text

CHANCE = 0.2  # natural accuracy at or below this (10 classes) marks a cell as not having learned


def cell_result(run_dir: Path, eval_file: Path) -> dict | None:
    """One cell's figures from its run directory and its study evaluation (None if not evaluated)."""
    if not eval_file.is_file():
        return None
    ev = json.loads(eval_file.read_text())
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    acc = ev["accuracy"]
    return {"status": summary.get("status", "unknown"), "natural": acc["natural"], "pgd": acc["pgd"],
            "certified": acc["best"], "certified_deeppoly": acc.get("deeppoly"),
            "certified_by": {m: acc[m] for m in ev["methods"]}, "epochs": summary.get("epochs_done"),
            "train_time_s": summary.get("train_time_s"), "eval_time_s": ev["eval_time_s"],
            "checkpoint_epoch": ev["checkpoint_epoch"], "n_test": ev["n"], "run_dir": str(run_dir)}


def verdict(cells: dict) -> dict:
    """The orderings the study is about, from best-of certified accuracy (None where a cell is missing)."""
    def cert(name):
        c = cells.get(name)
        return None if c is None else c["certified"]

    out = {}
    g_ibp, g_dp = cert("grad-ibp"), cert("grad-deeppoly")
    out["paradox_under_grad"] = None if None in (g_ibp, g_dp) else g_ibp >= g_dp
    gls_dp = [v for v in (cert("rgs-deeppoly"), cert("pgpe-deeppoly")) if v is not None]
    out["gls_reverses"] = None if g_ibp is None or not gls_dp else max(gls_dp) >= g_ibp
    for opt in ("grad", "rgs", "pgpe"):
        a, b = cert(f"{opt}-deeppoly"), cert(f"{opt}-ibp")
        out[f"tighter_wins_under_{opt}"] = None if None in (a, b) else a >= b
    return out


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _minutes(c) -> str:
    return f"{((c['train_time_s'] or 0) + c['eval_time_s']) / 60:.1f} min"


def markdown(results: dict) -> str:
    spec, cells = results["spec"], results["cells"]
    opts, rels = spec["optimizers"], spec["relaxations"]
    t, ev = spec["train"], spec["eval"]
    lines = [f"# Paradox study ({spec['preset']} budget)", "",
             f"MNIST, {t['net']} (width {t['width']}), eps {t['eps']:g}, {t['epochs']} epochs on "
             f"{results['n_train']} training images (batch {t['batch_size']}), eps ramp epochs "
             f"{t['eps_start_epoch']}-{t['eps_end_epoch']}; RGS {spec['rgs']['population']} samples, sigma "
             f"{spec['rgs']['sigma']:g}; PGPE population {spec['pgpe']['population']}, sigma {spec['pgpe']['sigma']:g}, "
             f"lr {spec['pgpe']['lr']:g} ({spec['pgpe']['optimizer']}), warm-started from the grad cell of the same "
             f"relaxation, then {results['pgpe_schedule']['epochs']} epoch(s) on {results['pgpe_schedule']['images']} "
             "images at full eps.", "",
             f"Budget: {results['budget_rule']}", "",
             f"Evaluation: the final network (last.pt) of every cell, first {results['n_test']} MNIST test images, "
             f"eps {t['eps']:g}, PGD-{ev['pgd_steps']}x{ev['pgd_restarts']}; certified = best of "
             f"{', '.join(results['eval_methods'])} (DeepPoly alone in parentheses).", ""]

    def table(title, fmt):
        rows = [f"**{title}**", "", "| relaxation | " + " | ".join(opts) + " |", "|---" * (len(opts) + 1) + "|"]
        for r in rels:
            vals = []
            for o in opts:
                c = cells.get(f"{o}-{r}")
                vals.append("not run" if c is None else fmt(c))
            rows.append(f"| {r} | " + " | ".join(vals) + " |")
        return rows + [""]

    def cert_fmt(c):
        flag = " (at chance)" if c["natural"] <= CHANCE else ""
        return f"{_pct(c['certified'])} ({_pct(c['certified_deeppoly'])}){flag}"

    lines += table("Certified accuracy, % (best-of; DeepPoly)", cert_fmt)
    lines += table("Natural accuracy, %", lambda c: _pct(c["natural"]))
    lines += table(f"PGD accuracy, %", lambda c: _pct(c["pgd"]))
    lines += table("Wall time (training + evaluation)", _minutes)
    lines += ["**Bound evaluations in training (member x image, PGPE's warm start included)**", "",
              "| cell | evaluations |", "|---|---|"]
    lines += [f"| {name} | {n:,} |" for name, n in results["bound_evaluations"].items()] + [""]
    v = results["verdict"]
    word = {True: "yes", False: "no", None: "not measured"}
    lines += ["**Verdict** (from the table above)", "",
              f"* Paradox under plain gradients (grad-IBP certified >= grad-DeepPoly): {word[v['paradox_under_grad']]}",
              f"* GLS reverses it (RGS or PGPE with DeepPoly >= grad with IBP): {word[v['gls_reverses']]}",
              *[f"* Tighter wins under {o} (DeepPoly >= IBP): {word[v[f'tighter_wins_under_{o}']]}" for o in opts], "",
              f"Published reference ({results['published_setting']}): " +
              ", ".join(f"{r} {_pct(p)}" for r, p in results["published_grad"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec, cells = results["spec"], results["cells"]
    rels = spec["relaxations"]
    xs = range(len(rels))
    fig, ax = plt.subplots(figsize=(6, 4))
    for opt, marker in zip(spec["optimizers"], "osd"):
        ys = [100 * cells[f"{opt}-{r}"]["certified"] if f"{opt}-{r}" in cells else float("nan") for r in rels]
        ax.plot(xs, ys, marker=marker, label=opt)
    pub = [100 * results["published_grad"][r] if r in results["published_grad"] else float("nan") for r in rels]
    ax.plot(xs, pub, "kx", markersize=9, linestyle="none", label=f"published ({results['published_setting']})")
    ax.set_xticks(list(xs), rels)
    ax.set_xlabel("training relaxation")
    ax.set_ylabel("certified accuracy, % (best-of)")
    ax.set_ylim(0, 100)
    ax.set_title(f"paradox study, {spec['preset']} budget, eps {spec['train']['eps']:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write(results: dict, out: Path) -> None:
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown(results))
    plot(results, out / "results.png")


def sweep_markdown(rows: list[dict], spec: dict) -> str:
    """The sweep table, ranked by final validation certified accuracy (training relaxation): the test
    set is never used to choose hyper-parameters."""
    sw = spec["sweep"]
    lines = [f"# RGS / PGPE sweep ({spec['preset']} budget)", "",
             f"Relaxation {sw['relaxation']}, {sw['epochs']} epoch(s) per RGS run; PGPE runs warm-start from the "
             f"grad-{sw['relaxation']} cell and train {spec['pgpe_schedule']['epochs']} epoch(s) on "
             f"{spec['pgpe_schedule']['images']} images (the preset's population; other populations by the budget rule). Ranked by the final validation "
             f"certified accuracy ({sw['relaxation']}, {spec['train']['val_subset']} validation images); "
             "'grad (warm start)' is the network every PGPE run starts from.", "",
             "| method | change from the preset | val certified % | val natural % | train time |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], -(r["val_certified_acc"] or 0))):
        lines.append(f"| {r['method']} | {r['change']} | {_pct(r['val_certified_acc'])} | {_pct(r['val_natural_acc'])} | "
                     f"{(r['train_time_s'] or 0):.0f} s |")
    return "\n".join(lines) + "\n"
