"""Build gls._C: the C++ ops always, their CUDA part when torch is a CUDA build and nvcc is found.

No GPU is needed to compile the CUDA sources: when none is visible we default CUDA_HOME to nvcc's
installation and TORCH_CUDA_ARCH_LIST to "8.0;9.0" (Ampere, Hopper). GLS_NO_CUDA=1 skips CUDA.
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


def _want_cuda(torch):
    if os.environ.get("GLS_NO_CUDA", "0") not in ("", "0"):
        return False
    return torch.version.cuda is not None and _cuda_home() is not None


def extensions():
    # Defaults must be in the environment before torch.utils.cpp_extension reads them.
    import torch

    use_cuda = _want_cuda(torch)
    if use_cuda:
        os.environ["CUDA_HOME"] = _cuda_home()
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = ["-O3", "-std=c++20", "-DNDEBUG"] + openmp
    kwargs = dict(
        include_dirs=[os.path.join(here, "csrc", "include")],
        extra_link_args=openmp,
        py_limited_api=False,
    )
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-std=c++20", "-DNDEBUG", "-lineinfo"]
        ext = CUDAExtension("gls._C", sources, extra_compile_args={"cxx": cxx + ["-DGLS_WITH_CUDA"], "nvcc": nvcc + ["-DGLS_WITH_CUDA"]}, **kwargs)
    else:
        ext = CppExtension("gls._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(
    packages=find_packages(include=["gls", "gls.*", "gls_kernels", "gls_kernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
