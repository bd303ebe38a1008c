"""The CUDA emulation itself (csrc/emu): tests/cuda_emu_selftest.cpp runs kernels with known results
(shared memory and barriers, shuffles, atomics, dynamic shared memory) and launches the emulation must
refuse (divergent synchronisation, masks naming exited or missing lanes, bad configurations). The CUDA
kernels of gls run on it in every op test (the `cuda-emu` backend of tests/conftest.py)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CXX = shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_emulation_selftest(tmp_path):
    exe = tmp_path / "selftest"
    build = subprocess.run([CXX, "-std=c++20", "-O1", "-fopenmp", f"-I{ROOT / 'csrc' / 'emu'}",
                            str(ROOT / "tests" / "cuda_emu_selftest.cpp"), str(ROOT / "csrc" / "emu" / "cuda_emu.cpp"),
                            "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "FAIL" not in run.stdout, run.stdout + run.stderr
    assert run.stdout.count("\nok ") + run.stdout.startswith("ok ") == 15, run.stdout
