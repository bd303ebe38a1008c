"""``python -m gls.app.study.evaluate RUN_DIR --out FILE ...``: one study evaluation of a run's final network.

The final network is the run's ``last.pt`` (the same rule for every cell: "best" is chosen by each run's
own training relaxation, which differs between cells). It goes through gls.app.certify's ``evaluate`` on
the first ``--subset`` test images: natural, PGD and certified accuracy per relaxation and best-of.
The result is written atomically to ``--out`` with the settings it was made with, so a study re-run
knows whether it is still valid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from gls.app import checkpoint, data
from gls.app.certify import evaluate


def settings(eps: float, subset: int | None, methods: list[str], pgd_steps: int, pgd_restarts: int) -> dict:
    return {"eps": eps, "subset": subset, "methods": list(methods), "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts}


def is_valid(path: Path, wanted: dict) -> bool:
    """`path` holds an evaluation made with the settings `wanted`."""
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("settings") == wanted
    except json.JSONDecodeError:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gls.app.study.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--methods", default="ibp,hbox,crown-ibp,deeppoly")
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--pgd-restarts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        payload = checkpoint.load(args.run_dir, checkpoint.LAST)
        model, cfg = checkpoint.model_from_checkpoint(payload)
        split = data.load(cfg["dataset"], cfg.get("data_dir")).test.subset(args.subset)
        methods = [m for m in args.methods.split(",") if m]
        t0 = time.perf_counter()
        result = evaluate(model, split, args.eps, methods=methods, batch_size=args.batch_size,
                          pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts, device=args.device)
    except (ValueError, checkpoint.CheckpointError, data.DataError, OSError) as e:
        print(f"gls.app.study.evaluate: error: {e}", file=sys.stderr)
        return 2
    record = {"settings": settings(args.eps, args.subset, methods, args.pgd_steps, args.pgd_restarts),
              "checkpoint_epoch": payload["epoch"], "eval_time_s": time.perf_counter() - t0, **result}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
