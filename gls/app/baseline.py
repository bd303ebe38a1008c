"""The plain-gradient baseline beside a run's final table: committed study cells with the same budget.

``python -m gls.train``'s default run is the RGS-DeepPoly cell of the ``quick`` paradox study
(gls.app.config.DEFAULT_RUN), whose results are committed under docs/study/. A finished run whose
budget (gls.app.study.paradox.BUDGET_KEYS: network, data, eps schedule, epochs, batch, seed) and test
evaluation (images, certifiers, PGD) equal a committed study's is shown beside that study's
plain-gradient cells, so one command shows what Gaussian Loss Smoothing changes against plain
gradients at the same cost. The studies are read from the source tree (an editable install, as the
README's); without one, or when no study matches, the table says how to make the baseline.
"""
from __future__ import annotations

import json
from pathlib import Path

from gls.app.study import paradox

STUDIES = Path(__file__).resolve().parents[2] / "docs" / "study"


def matches(cfg, results: dict) -> bool:
    """Whether run config `cfg` (a TrainConfig) has the budget and test evaluation of study `results`."""
    spec = results["spec"]
    train, ev = spec["train"], spec["eval"]
    return (all(getattr(cfg, k) == train.get(k) for k in paradox.BUDGET_KEYS)
            and cfg.test_subset == ev["subset"] and cfg.pgd_steps == ev["pgd_steps"]
            and cfg.pgd_restarts == ev["pgd_restarts"] and sorted(cfg.certify) == sorted(results["eval_methods"]))


def find(cfg, studies: Path = STUDIES) -> tuple[Path, dict] | None:
    """(results.json, its contents) of the first committed study that `cfg` matches, or None."""
    for path in sorted(studies.glob("*/results.json")):
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if matches(cfg, results):
            return path, results
    return None


def _row(label: str, natural, certified, deeppoly, pgd, width: int) -> str:
    def pct(v):
        return f"{'—':>9}" if v is None else f"{100 * v:7.2f} %"
    return f"  {label:<{width}}  {pct(natural)}  {pct(certified)}  {pct(deeppoly)}  {pct(pgd)}"


def table(cfg, result: dict, studies: Path = STUDIES) -> str:
    """This run's test figures beside the matching study's grad cells (or a line saying there is none)."""
    found = find(cfg, studies)
    if found is None:
        if cfg.method == "grad":
            return ("plain-gradient baseline: this run is one (--method grad); no committed study "
                    "(docs/study/*/results.json) has its budget to compare with")
        return ("plain-gradient baseline: no committed study (docs/study/*/results.json) has this run's budget; "
                "run the same options with --method grad for it")
    path, results = found
    acc = result["accuracy"]
    own = f"this run ({cfg.method} {cfg.relaxation})"
    cells = [(f"grad {c['relaxation']} (study)", c) for c in results["cells"].values() if c["optimizer"] == "grad"]
    width = max(len(own), *(len(label) for label, _ in cells))
    lines = [f"beside plain gradients at the same budget ({path.parent.name} study, final networks, same test "
             f"images and certifiers; {path.parent / 'results.md'}):",
             f"  {'':<{width}}  {'natural':>9}  {'certified':>9}  {'deeppoly':>9}  {'PGD':>9}",
             _row(own, acc["natural"], acc["best"], acc.get("deeppoly"), acc["pgd"], width)]
    lines += [_row(label, c["natural"], c["certified"], c["certified_deeppoly"], c["pgd"], width) for label, c in cells]
    return "\n".join(lines)
