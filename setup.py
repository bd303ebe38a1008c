"""Build gls._C: the C++ ops always, their CUDA part when a GPU is visible or GLS_WITH_CUDA=1.

The CUDA part needs a CUDA build of torch and nvcc. It is opt-in without a GPU because it is most
of the build time (about 6.5 min on a 2-core CPU against about 1.5 min for the C++ ops) and is useless
there; GLS_WITH_CUDA=1 compiles it anyway (CI does, to prove the sources build), with CUDA_HOME
defaulting to nvcc's installation and TORCH_CUDA_ARCH_LIST to "8.0;9.0" (Ampere, Hopper).
GLS_NO_CUDA=1 skips it even with a GPU. ``python setup.py --plan`` prints what a build would
compile and roughly how long it takes, without building.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup


def _cuda_home():
    """CUDA_HOME if set, else /usr/local/cuda, else the installation that holds the nvcc on PATH."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    return home if home and os.path.isdir(os.path.join(home, "lib64")) else None


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


# Measured on a 2-core CPU (MAX_JOBS=2): the C++ ops, and the CUDA kernels for two architectures.
_MINUTES_CPP, _MINUTES_CUDA = 1.5, 6.5


def _cuda_choice(torch) -> tuple[bool, str]:
    """(compile the CUDA kernels?, why), from GLS_NO_CUDA / GLS_WITH_CUDA, the GPU, torch and nvcc."""
    if _flag("GLS_NO_CUDA"):
        return False, "GLS_NO_CUDA=1"
    asked = _flag("GLS_WITH_CUDA")
    if not asked and not torch.cuda.is_available():
        return False, "no GPU visible (GLS_WITH_CUDA=1 compiles them anyway)"
    why = "GLS_WITH_CUDA=1" if asked else "a GPU is visible"
    if torch.version.cuda is None:
        if asked:
            raise SystemExit("setup.py: GLS_WITH_CUDA=1 but this torch is not a CUDA build")
        return False, "torch is not a CUDA build"
    if _cuda_home() is None:
        if asked:
            raise SystemExit("setup.py: GLS_WITH_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return False, f"{why}, but nvcc was not found (set CUDA_HOME)"
    return True, why


def _sources(use_cuda: bool) -> tuple[list[str], list[str]]:
    cpp = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    return cpp, sorted(glob.glob("csrc/cuda/*.cu")) if use_cuda else []


def print_plan() -> None:
    """One line per part of the build: what is compiled, why, and about how long it takes."""
    import torch

    use_cuda, why = _cuda_choice(torch)
    cpp, cu = _sources(use_cuda)
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count())
    print(f"gls._C: compiling {len(cpp)} C++ files (about {_MINUTES_CPP:g} min on a 2-core CPU), MAX_JOBS={jobs}")
    if use_cuda:
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or ("8.0;9.0" if not torch.cuda.is_available() else "this GPU's")
        print(f"gls._C: compiling {len(cu)} CUDA files ({why}; architectures {arch}): "
              f"about {_MINUTES_CUDA:g} min more on a 2-core CPU")
    else:
        print(f"gls._C: CUDA kernels not compiled: {why}")
    sys.stdout.flush()


def extensions():
    # Defaults must be in the environment before torch.utils.cpp_extension reads them.
    import torch

    use_cuda, _ = _cuda_choice(torch)
    if use_cuda:
        os.environ["CUDA_HOME"] = _cuda_home()
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpp, cu = _sources(use_cuda)
    sources = cpp
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = ["-O3", "-std=c++20", "-DNDEBUG"] + openmp
    kwargs = dict(
        include_dirs=[os.path.join(here, "csrc", "include")],
        extra_link_args=openmp,
        py_limited_api=False,
    )
    if use_cuda:
        sources += cu
        nvcc = ["-O3", "-std=c++20", "-DNDEBUG", "-lineinfo"]
        ext = CUDAExtension("gls._C", sources, extra_compile_args={"cxx": cxx + ["-DGLS_WITH_CUDA"], "nvcc": nvcc + ["-DGLS_WITH_CUDA"]}, **kwargs)
    else:
        ext = CppExtension("gls._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if sys.argv[1:] == ["--plan"]:
    print_plan()
    sys.exit(0)
ext_modules, cmdclass = extensions()
setup(
    packages=find_packages(include=["gls", "gls.*", "gls_kernels", "gls_kernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
