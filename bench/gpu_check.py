"""One call checks a GPU: `make gpu-check` (python -m bench.gpu_check [--out DIR]).

With a CUDA device, against the torch it finds and installing nothing:
1. build: gls._C with the CUDA kernels for this GPU, in place (setup.py build_ext --inplace);
2. tests: the `cuda`-marked tests (CUDA kernels and compiled Triton: TRITON_INTERPRET unset);
3. sanitizer: compute-sanitizer memcheck and racecheck on the CUDA kernels' op tests, when it answers;
4. fuzz: the soundness fuzz of tests/test_soundness_fuzz.py (sampling and PGD) with the bounds on the GPU;
5. bench: the quick peer and population benchmarks (auto_LiRPA's per-member loop on the same GPU when it
   is installed), reported by bench.report;
6. paths: gls.population_paths' cost model fitted on this GPU (bench.fit_population_paths; its COSTS
   entry for "cuda" is printed and written to population-paths-fit.json, to paste into COSTS).
It writes <device>-gpu-check.md and .json (stage times and results) and bench.report's <device>.md in
--out (default bench/results), and must finish within 8 minutes on one H100.

Without a GPU it runs the same stages on the emulated CUDA kernels (the cuda-emu backend), at tiny
sizes, so CI proves the script itself; its files then go to build/gpu-check unless --out says otherwise.
Each stage prints its time; the exit status is non-zero when a stage failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GPU = torch.cuda.is_available()

# The op tests of the CUDA kernels, and the selection each mode runs of them.
OP_TESTS = ["tests/test_relu_relax.py", "tests/test_concretize.py", "tests/test_ibp_affine.py",
            "tests/test_backsub_linear_relu.py", "tests/test_backsub_conv_relu.py", "tests/test_philox4x32_10.py",
            "tests/test_noise_normal.py", "tests/test_noise_perturb.py", "tests/test_noise_weighted_sum.py",
            "tests/test_noise_sigma_weighted_sum.py"]
FUZZ_SEEDS = range(40) if GPU else range(2)  # random networks of the soundness fuzz
BENCH = (["bench/test_peer_bench.py", "bench/test_bounds_bench.py"] if GPU else ["bench/test_relu_relax_bench.py"])


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not (GPU and k == "TRITON_INTERPRET")}  # compiled Triton on a GPU
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not GPU:
        env["TRITON_INTERPRET"] = "1"
    return {**env, **extra}


def _run(cmd: list[str], log: Path, timeout: float, **env) -> tuple[int, str]:
    """Runs cmd in the repository, its output into log; (exit status, output). 124: timed out."""
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, code = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout:.0f} s", 124
    log.write_text(out if isinstance(out, str) else out.decode(errors="replace"))
    return code, out


def _pytest_counts(out: str) -> dict:
    """The counts of pytest's closing line ('3 passed, 1 skipped in ...')."""
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}


def stage_build(out_dir: Path) -> dict:
    if not GPU:  # the emulated kernels come with the ordinary build (make setup)
        from gls import native

        return {"ok": native.EMU_AVAILABLE, "what": "gls._C_cuda_emu loaded" if native.EMU_AVAILABLE else native.EMU_LOAD_ERROR}
    code, out = _run([sys.executable, "setup.py", "build_ext", "--inplace"], out_dir / "build.log", 480,
                     GLS_NO_CUDA_EMU="1", MAX_JOBS=str(os.cpu_count() or 4))
    if code != 0:
        return {"ok": False, "what": out.strip().splitlines()[-1] if out.strip() else f"exit {code}"}
    check = ("import torch, gls.native as n, gls.ops as o; "
             "missing=[op for op in o.OPS if not n.has_kernel(op, 'CUDA')]; print('missing', missing); assert not missing")
    code, out = _run([sys.executable, "-c", check], out_dir / "build-check.log", 120)
    return {"ok": code == 0, "what": out.strip().splitlines()[-1] if out.strip() else ""}


def stage_tests(out_dir: Path) -> dict:
    if GPU:
        cmd = [sys.executable, "-m", "pytest", "tests", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    else:
        cmd = [sys.executable, "-m", "pytest", "tests/test_cuda_emu.py", *OP_TESTS[:3], "-k", "cuda-emu or selftest",
               "-q", "-p", "no:cacheprovider"]
    code, out = _run(cmd, out_dir / "tests.log", 300)
    counts = _pytest_counts(out)
    return {"ok": code == 0 and counts.get("passed", 0) > 0, **counts}


def stage_sanitizer(out_dir: Path) -> dict:
    tool = shutil.which("compute-sanitizer") or next(
        (str(p) for p in (Path("/usr/local/cuda/bin/compute-sanitizer"),) if p.exists()), None)
    if not GPU or tool is None:
        return {"ok": True, "what": "not run: " + ("no GPU" if not GPU else "compute-sanitizer not found")}
    result = {"ok": True}
    for check in ("memcheck", "racecheck"):  # a time cap each: what they found by then is reported
        cmd = [tool, "--tool", check, "--error-exitcode", "3", sys.executable, "-m", "pytest", *OP_TESTS[:5],
               "-m", "cuda", "-k", "matches_reference and not LARGE", "-q", "-x", "-p", "no:cacheprovider"]
        code, out = _run(cmd, out_dir / f"sanitizer-{check}.log", 75)
        found = len(re.findall(r"^========= (?:Invalid|Race|Error|Program hit)", out, re.M))
        result[check] = {"exit": code, "reports": found, **_pytest_counts(out)}
        result["ok"] &= code in (0, 124) and found == 0
    return result


def stage_fuzz(out_dir: Path) -> dict:
    """In a fresh process, so that it loads the gls._C the build stage made."""
    code = ("import json, sys; from tests.test_soundness_fuzz import summarise; "
            f"print(json.dumps(summarise(range({len(FUZZ_SEEDS)}), device={'cuda' if GPU else 'cpu'!r}), default=str))")
    env = {} if GPU else {"GLS_BACKEND": "cuda-emu"}  # without a GPU: every gls op on the emulated CUDA kernels
    code_, out = _run([sys.executable, "-c", code], out_dir / "fuzz.log", 240, **env)
    try:
        report = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": False, "what": out.strip().splitlines()[-1] if out.strip() else f"exit {code_}"}
    return {"ok": code_ == 0 and report["ok"], "summary": report["line"], "crashes": report["crashes"],
            "out_of_bounds": report["out_of_bounds"], "worst": report["worst"]}


def stage_bench(out_dir: Path) -> dict:
    raw = out_dir / "gpu-check-bench.json"
    code, out = _run([sys.executable, "-m", "pytest", *BENCH, "--benchmark-only", "--bench-size", "quick",
                      f"--benchmark-json={raw}", "-q", "-p", "no:cacheprovider"], out_dir / "bench.log", 240)
    counts = _pytest_counts(out)
    if code != 0 or not raw.exists():
        return {"ok": False, **counts}
    rc, rep = _run([sys.executable, "-m", "bench.report", str(raw), "--out", str(out_dir)], out_dir / "report.log", 120)
    return {"ok": rc == 0, **counts, "report": rep.strip().splitlines()[-1] if rep.strip() else ""}


def stage_paths(out_dir: Path) -> dict:
    """Without a GPU, the MLP's layers on the CPU at one round: proves the script in seconds."""
    raw = out_dir / "population-paths-fit.json"
    args = ["--device", "cuda", "--rounds", "3"] if GPU else ["--device", "cpu", "--rounds", "1", "--networks", "mlp"]
    code, out = _run([sys.executable, "-m", "bench.fit_population_paths", *args, "--out", str(raw)],
                     out_dir / "paths.log", 240)
    lines = out.strip().splitlines()
    regret = next((line for line in lines if line.startswith("over ")), "")
    return {"ok": code == 0 and raw.exists(), "regret": regret}


STAGES = [("build", stage_build), ("tests", stage_tests), ("sanitizer", stage_sanitizer), ("fuzz", stage_fuzz),
          ("bench", stage_bench), ("paths", stage_paths)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ("bench/results" if GPU else "build/gpu-check"),
                        help="where the results go (default: bench/results with a GPU, build/gpu-check without)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from bench.harness import device_name, sanitise

    device = device_name()
    mode = "GPU" if GPU else "emulated CUDA (no GPU: tiny sizes)"
    print(f"gpu-check on {device}: {mode}; torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    results, start = {}, time.perf_counter()
    for name, stage in STAGES:
        t = time.perf_counter()
        try:
            res = stage(args.out)
        except Exception as exc:  # a stage that crashes is a failed stage; the others still run
            res = {"ok": False, "what": f"{type(exc).__name__}: {exc}"}
        res["seconds"] = round(time.perf_counter() - t, 1)
        results[name] = res
        detail = ", ".join(f"{k} {v}" for k, v in res.items() if k not in ("ok", "seconds") and not isinstance(v, dict))
        print(f"  {name:<9} {'ok  ' if res['ok'] else 'FAIL'} {res['seconds']:7.1f} s  {detail}", flush=True)
    total = round(time.perf_counter() - start, 1)
    ok = all(r["ok"] for r in results.values())
    summary = {"device": device, "mode": mode, "torch": torch.__version__, "cuda": torch.version.cuda, "ok": ok,
               "seconds": total, "loadavg_at_end": list(os.getloadavg()), "stages": results}
    stem = args.out / f"{sanitise(device)}-gpu-check"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# gpu-check on {device}", "", f"{mode}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
             f"{total:.1f} s in all; {'every stage passed' if ok else 'FAILED'}.", "",
             "| stage | result | seconds | details |", "| --- | --- | --- | --- |"]
    for name, res in results.items():
        detail = "; ".join(f"{k} {v}" for k, v in res.items() if k not in ("ok", "seconds"))
        lines.append(f"| {name} | {'ok' if res['ok'] else 'FAILED'} | {res['seconds']} | {detail} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"gpu-check: {'passed' if ok else 'FAILED'} in {total:.1f} s; {stem}.md", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
