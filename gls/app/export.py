"""Export a trained network and its certification queries as a VNN-COMP benchmark.

``python -m gls.export RUN_DIR_OR_CKPT --eps E --n N --out DIR [--which best|last] [--split test|val]
[--timeout T]`` writes DIR/model.onnx (the network with its input normalisation, pixel space),
DIR/vnnlib/img_<i>.vnnlib for the first N images of the split (the region gls certifies: x +- eps clipped
to [0, 1]; "unsat" = robust) and DIR/instances.csv, for alpha,beta-CROWN or another VNN-COMP verifier
(DIR/README.txt says how). gls.onnx_io.export_benchmark is the Python function behind it.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from gls.app import checkpoint, data
from gls.onnx_io import export_benchmark

HOWTO = """VNN-COMP benchmark written by `python -m gls.export` from {source}
eps = {eps:g} (L-inf, pixel space, clipped to [0, 1]) on the first {n} {split} images; unsat = certified.
alpha,beta-CROWN (complete_verifier/): python abcrown.py --config YOUR.yaml --root_path {out} --csv_name instances.csv
  (or one instance: python abcrown.py --config YOUR.yaml --onnx_path {out}/model.onnx --vnnlib_path {out}/vnnlib/img_0.vnnlib)
gls itself: python -m gls.certify --onnx {out}/model.onnx --vnnlib {out}/vnnlib/img_0.vnnlib
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def main(argv=None) -> int:
    p = _Parser(prog="python -m gls.export", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("checkpoint", help="a run directory or a checkpoint file")
    p.add_argument("--eps", type=float, default=None, help="radius (default: the run's --eps)")
    p.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--which", choices=("last", "best"), default="best", help="checkpoint of a run directory")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--data-dir", default=None, help="data directory (default: the run's)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-instance timeout in instances.csv (s)")
    try:
        args = p.parse_args(argv)
        if args.n < 1:
            raise ValueError(f"--n must be a positive number of images, got {args.n}")
        if not (math.isfinite(args.timeout) and args.timeout > 0):
            raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
        which = checkpoint.BEST if args.which == "best" else checkpoint.LAST
        if which == checkpoint.BEST and os.path.isdir(args.checkpoint) and not os.path.exists(
                os.path.join(args.checkpoint, checkpoint.BEST)):
            which = checkpoint.LAST
        path = checkpoint.resolve(args.checkpoint, which)
        model, cfg = checkpoint.model_from_checkpoint(checkpoint.load(path))
        eps = cfg["eps"] if args.eps is None else args.eps
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"--eps must be a finite number >= 0, got {eps}")
        ds = data.load(cfg["dataset"], args.data_dir if args.data_dir is not None else cfg.get("data_dir"))
        split = getattr(ds, args.split).subset(args.n)
        rows = export_benchmark(model, split.x, split.y, eps, args.out, timeout=args.timeout)
        checkpoint.write_text(os.path.join(args.out, "README.txt"),
                              HOWTO.format(source=path, eps=eps, n=len(rows), split=args.split, out=args.out))
        print(f"gls.export: wrote {args.out}/model.onnx, {len(rows)} properties in {args.out}/vnnlib and "
              f"{args.out}/instances.csv (eps = {eps:g})")
    except (ValueError, TypeError, checkpoint.CheckpointError, data.DataError, OSError, ImportError) as e:
        print(f"gls.export: error: {e}", file=sys.stderr)
        return 2
    return 0
