"""Turn a pytest-benchmark JSON file into bench/results/<device>.md and a plot of throughput vs P.

    python -m bench.report bench/results/run.json [--out bench/results]

Benchmarks labelled with bench.harness.record() are grouped by (suite, case); within a case every
candidate is compared with every baseline as time(baseline) / time(candidate) (so > 1 means the
candidate is faster; with equal work per call it is also the throughput ratio). Times are the best
round (`min`). Benchmarks without labels (other files' benchmarks) are listed with their times.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from bench.harness import sanitise

STAT = "min"

# extra_info keys shown per benchmark, with a heading and a formatter
METRICS = {
    "flops_per_s": ("GFLOP/s", lambda v: f"{v / 1e9:.2f}"),
    "flop_fraction": ("FLOP fraction of dense", lambda v: f"{v:.3f}"),
    "peak_bytes": ("peak extra MB", lambda v: f"{v / 2**20:.1f}"),
    "wire_bytes_per_step": ("bytes sent / step / rank", lambda v: f"{v:.0f}"),
    "broadcast_bytes_per_step": ("weight broadcast bytes (4 P d)", lambda v: f"{v:.3g}"),
    "broadcast_ratio": ("broadcast / sent", lambda v: f"{v:.3g}"),
}

# (suite, case filter, candidate impl, baseline impl, target ratio, device type, what it checks)
RATIO_TARGETS = [
    ("bounds", dict(model="cnn3", method="deeppoly"), "gls", "loop", 2.0, "cpu",
     "batched deeppoly >= 2x the per-member loop, CNN3, P = 64 (every P measured is listed)"),
    ("bounds", dict(model="cnn3", method="deeppoly"), "gls", "loop", 10.0, "cuda",
     "batched deeppoly >= 10x the per-member loop, CNN3, P = 64 (every P measured is listed)"),
    ("backsub_efficiency", dict(model="mlp"), "backsub", "matmul", 0.6, "cpu",
     "back-substitution >= 60 % of the torch.matmul FLOP/s, MLP"),
    ("rgs", dict(N=16), "one-pass", "separate", 3.0, None,
     "RGS, N = 16 in one pass >= 3x faster than 16 separate passes"),
    ("bounds", dict(model="cnn7", method="ibp", B=4, P=16), "gls", "lirpa", 3.0, "cpu",
     "cnn7 IBP (B = 4, P = 16) >= 3x auto_LiRPA's per-member loop"),
    ("bounds", dict(model="cnn3", method="ibp", B=64, P=64), "gls", "lirpa", 3.0, "cpu",
     "cnn3 IBP (B = 64, P = 64) >= 3x auto_LiRPA's per-member loop"),
    ("bounds", dict(model="cnn3", method="crown-ibp", B=8, P=64), "gls", "lirpa", 3.0, "cpu",
     "cnn3 CROWN-IBP (B = 8, P = 64) >= 3x auto_LiRPA's per-member loop"),
    ("cnn7", {}, "deeppoly", "lirpa", 5.0, "cpu",
     "cnn7 DeepPoly bounds (MNIST, IBP init, P = 1) >= 5x auto_LiRPA's CROWN"),
    ("pgpe_members", {}, "gls", "loop", 1.0, None,
     "PGPE step, CNN7, IBP, P = 64: one pass >= the same step member by member"),
]
NEVER_LOSES = ("bounds", "gls", ("loop", "reference"))  # suite, candidate, baselines it must not lose to
PGPE_MEMORY_TARGET = 1e9  # bytes (1 GB): peak extra memory of a CNN7, P = 256 PGPE step


def load(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _time(bench: dict) -> float:
    return bench["stats"][STAT]


def _fmt_time(t: float) -> str:
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def _fmt_rate(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _fmt_info(info: dict) -> str:
    """extra_info as 'key=value' pairs, numbers to 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


def _matches(bench: dict, filt: dict) -> bool:
    params = bench["extra_info"].get("params", {})
    return all(str(params.get(k)) == str(v) for k, v in filt.items())


def group(benchmarks: list[dict]):
    """{suite: {case: [benchmarks]}} for labelled benchmarks, and the list of unlabelled ones."""
    suites: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    other = []
    for b in benchmarks:
        info = b.get("extra_info", {})
        if "suite" in info and "role" in info:
            suites[info["suite"]][info["case"]].append(b)
        else:
            other.append(b)
    return suites, other


def ratios(case: list[dict]) -> list[tuple[dict, dict, float]]:
    """(candidate, baseline, time(baseline) / time(candidate)) for every pair in one case."""
    cands = [b for b in case if b["extra_info"]["role"] == "candidate"]
    bases = [b for b in case if b["extra_info"]["role"] == "baseline"]
    return [(c, b, _time(b) / _time(c)) for c in cands for b in bases]


def suite_table(cases: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: one per benchmark, with time, throughput, metrics and ratios vs the baselines."""
    baselines = sorted({b["extra_info"]["impl"] for case in cases.values() for b in case
                        if b["extra_info"]["role"] == "baseline"})
    metrics = [k for k in METRICS if any(k in b["extra_info"] for case in cases.values() for b in case)]
    head = ["case", "impl", f"time ({STAT})", "throughput"] + [METRICS[k][0] for k in metrics]
    head += [f"x vs {b}" for b in baselines]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, case in cases.items():
        pairs = {(c["name"], b["extra_info"]["impl"]): r for c, b, r in ratios(case)}
        order = sorted(case, key=lambda b: (b["extra_info"]["role"] != "candidate", b["extra_info"]["impl"]))
        for b in order:
            info = b["extra_info"]
            t = _time(b)
            rate = f"{_fmt_rate(info['items'] / t)} {info.get('unit', '')}/s" if "items" in info else ""
            row = [name, info["impl"] + (" *" if info["role"] == "candidate" else ""), _fmt_time(t), rate]
            row += [METRICS[k][1](info[k]) if k in info else "" for k in metrics]
            row += [f"{pairs[(b['name'], base)]:.2f}" if (b["name"], base) in pairs else "" for base in baselines]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def targets(suites, device_type: str) -> list[str]:
    """The issue's targets, each with the measured value, or a note that this run did not measure it."""
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for suite, filt, cand, base, goal, dev, what in RATIO_TARGETS:
        if dev is not None and dev != device_type:
            continue
        found = [(c["extra_info"]["case"], r) for case in suites.get(suite, {}).values() for c, b, r in ratios(case)
                 if _matches(c, filt) and c["extra_info"]["impl"] == cand and b["extra_info"]["impl"] == base]
        if not found:
            lines.append(f"| {what} | not measured in this run | - |")
        for name, r in found:
            where = f"{name}; " if name else ""
            lines.append(f"| {what} | {r:.3g} ({where}target {goal:g}) | {'yes' if r >= goal else 'no'} |")
    lines += never_loses(suites)
    for model, impl, value, how in pgpe_memory(suites, "cnn7", 256):
        met = "-" if not impl.startswith("gls") else ("yes" if value < PGPE_MEMORY_TARGET else "no")
        lines.append(f"| PGPE step, CNN7, P = 256, {impl}: peak extra memory (target < 1 GB for gls; naive "
                     f"about 17 GB) | {value / 1e9:.2f} GB ({how}) | {met} |")
    if not pgpe_memory(suites, "cnn7", 256):
        lines.append("| PGPE step, CNN7, P = 256: peak extra memory < 1 GB | not measured in this run | - |")
    return lines


def never_loses(suites) -> list[str]:
    """Target rows: every cell of the population suite where the batched pass is slower than a baseline it
    must not lose to, and the lowest such ratio (target >= 1)."""
    suite, cand, bases = NEVER_LOSES
    found = [(c["extra_info"]["case"], b["extra_info"]["impl"], r) for case in suites.get(suite, {}).values()
             for c, b, r in ratios(case) if c["extra_info"]["impl"] == cand and b["extra_info"]["impl"] in bases]
    if not found:
        return [f"| {suite}: {cand} never slower than {' or '.join(bases)} | not measured in this run | - |"]
    lines = [f"| {suite}: {cand} slower than {base} in {name} | {r:.3g} (target 1) | no |"
             for name, base, r in sorted(found, key=lambda f: f[2]) if r < 1]
    name, base, r = min(found, key=lambda f: f[2])
    lines.append(f"| {suite}: lowest ratio of {cand} to {' / '.join(bases)} over {len(found)} comparisons "
                 f"| {r:.3g} ({name}, vs {base}; target 1) | {'yes' if r >= 1 else 'no'} |")
    return lines


def pgpe_memory(suites, model: str, P: int) -> list[tuple[str, str, float, str]]:
    """(model, impl, peak bytes, 'measured' | how it was extrapolated) of PGPE steps at population P.

    Where P itself was not measured, the peak is extrapolated linearly in P from the two largest
    populations measured for that model and impl (population, noise and pass memory all grow
    linearly in P).
    """
    points = defaultdict(list)
    for case in suites.get("pgpe", {}).values():
        for b in case:
            info = b["extra_info"]
            if info["params"].get("model") == model and "peak_bytes" in info:
                points[info["impl"]].append((int(info["params"]["P"]), float(info["peak_bytes"])))
    out = []
    for impl, pts in sorted(points.items()):
        pts = sorted(pts)
        exact = [v for p, v in pts if p == P]
        if exact:
            out.append((model, impl, exact[0], "measured"))
        elif len(pts) >= 2:
            (p0, v0), (p1, v1) = pts[-2], pts[-1]
            slope = (v1 - v0) / (p1 - p0)
            out.append((model, impl, v1 + slope * (P - p1), f"extrapolated from P = {p0}, {p1}"))
    return out


MODEL_ORDER = ("mlp", "cnn3", "cnn7")
METHOD_ORDER = ("ibp", "hbox", "crown-ibp", "deeppoly")


def _order(value, order) -> tuple:
    return (order.index(value), value) if value in order else (len(order), value)


def plot(suites, path: Path, title: str) -> bool:
    """Throughput vs P for the population-bound suite: a row per model, a column per method, a line per
    impl (the loop's P = 1 point is the gls call itself, which the suite does not run twice)."""
    runs = [b for case in suites.get("bounds", {}).values() for b in case]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = defaultdict(lambda: defaultdict(dict))  # (model, method) -> impl -> {P: throughput}
    for b in runs:
        p = b["extra_info"]["params"]
        points[(p["model"], p["method"])][b["extra_info"]["impl"]][int(p["P"])] = b["extra_info"]["items"] / _time(b)
    for lines in points.values():
        if "loop" in lines and 1 in lines.get("gls", {}):
            lines["loop"].setdefault(1, lines["gls"][1])
    models = sorted({m for m, _ in points}, key=lambda m: _order(m, MODEL_ORDER))
    methods = sorted({m for _, m in points}, key=lambda m: _order(m, METHOD_ORDER))
    fig, axes = plt.subplots(len(models), len(methods), figsize=(4.2 * len(methods), 3.3 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            lines = points.get((model, method))
            if not lines:
                ax.axis("off")
                continue
            for impl, pts in sorted(lines.items()):
                ps = sorted(pts)
                ax.plot(ps, [pts[p] for p in ps], marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{model} / {method}", fontsize=10)
            ax.set_xlabel("population P")
            ax.set_ylabel("samples x members / s")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render(data: dict, out_dir: Path) -> Path:
    """Write <out_dir>/<device>.md (and <device>.png) from pytest-benchmark JSON `data`; return the .md path."""
    gls_info = data.get("machine_info", {}).get("gls")
    if gls_info is None:
        raise ValueError("the JSON has no machine_info['gls']: was it written by `pytest bench/ --benchmark-json=...`?")
    device = gls_info["device"]
    stem = sanitise(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    suites, other = group(data.get("benchmarks", []))
    png = out_dir / f"{stem}.png"
    has_plot = plot(suites, png, f"gls population bounds on {device}")

    md = [f"# gls benchmarks on {device}", ""]
    md.append(f"- run: {data.get('datetime', '?')}, size `{gls_info['bench_size']}`, torch {gls_info['torch']}, "
              f"{gls_info['torch_threads']} torch threads, {gls_info['cpu_count']} CPUs, "
              f"load average at start {', '.join(f'{v:.2f}' for v in gls_info['loadavg_at_start'])}")
    if "freed_memory_kept" in gls_info:
        md.append("- freed memory " + ("kept in the process (gls.app.heap), as gls.train does" if gls_info["freed_memory_kept"]
                                       else "given back as the C library's malloc does by default"))
    commit = data.get("commit_info", {})
    if commit.get("id"):
        md.append(f"- commit {commit['id'][:10]}{' (dirty tree)' if commit.get('dirty') else ''}")
    md.append(f"- times: best of the rounds (`{STAT}`); `x vs B` = time(B) / time(candidate), "
              "candidates marked `*`")
    md += ["", "## Targets", ""] + targets(suites, gls_info["device_type"])
    for suite, cases in suites.items():
        md += ["", f"## {suite}", ""] + suite_table(cases)
        notes = sorted({b["extra_info"]["note"] for case in cases.values() for b in case if "note" in b["extra_info"]})
        md += [""] + [f"- {n}" for n in notes] if notes else []
    if other:
        md += ["", "## other benchmarks (their own baselines, in extra_info)", "",
               f"| benchmark | time ({STAT}) | rounds | extra_info |", "| --- | --- | --- | --- |"]
        md += [f"| {b['fullname'].split('/')[-1]} | {_fmt_time(_time(b))} | {b['stats']['rounds']} | "
               f"{_fmt_info(b.get('extra_info', {}))} |" for b in other]
    if has_plot:
        md += ["", f"![throughput vs P]({png.name})"]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(md) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="file written by pytest --benchmark-json")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="output folder (default: bench/results)")
    args = parser.parse_args(argv)
    print(render(load(args.json), args.out))


if __name__ == "__main__":
    main()
