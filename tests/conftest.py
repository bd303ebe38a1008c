"""Test set-up: Triton's interpreter on machines without a GPU, the `cuda` marker, the `slow` marker
(larger runs, skipped unless selected with `-m slow`), and the `backend` fixture that runs an op's
tests on every backend.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.

tests/test_<op>.py names its op in a module constant OP; every test that takes `backend` then runs once
per backend of gls.ops that implements OP here (cpp and cuda when gls._C has the kernel, cuda-emu when
gls._C_cuda_emu has it, triton when triton imports; CUDA ones marked `cuda`), and also on the reference
when marked `with_reference`. cuda-emu runs the CUDA kernels on the CPU (csrc/emu), so every CUDA kernel
runs in the same tests as the others without a GPU.
"""
import importlib.util
import os
from dataclasses import dataclass

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
HAS_TRITON = importlib.util.find_spec("triton") is not None


@dataclass(frozen=True)
class Backend:
    """One backend of one op: `backend(*args)` calls gls.ops.<op>(*args, backend=name)."""

    op: str
    name: str  # gls.ops backend: reference, cpp, cuda, cuda-emu or triton
    device: str  # where its tensors live
    float32_only: bool = False  # the Triton bound kernels run in float32 only

    def __call__(self, *args):
        from gls import ops

        return getattr(ops, self.op)(*args, backend=self.name)

    @property
    def compiled(self) -> bool:
        return self.name in ("cpp", "cuda", "cuda-emu")

    def torch_op(self):
        """The torch op behind this backend (torch.ops.<gls, gls_cuda_emu or gls_triton>.<op>), registered."""
        from gls import ops

        ops.resolve(self.op, torch.device(self.device), self.name)
        namespace = {"triton": "gls_triton", "cuda-emu": "gls_cuda_emu"}.get(self.name, "gls")
        return getattr(getattr(torch.ops, namespace), self.op)

    def require(self, dtype: torch.dtype) -> None:
        """Skip unless this backend runs `dtype`."""
        if self.float32_only and dtype != torch.float32:
            pytest.skip(f"the {self.name} kernel of {self.op} runs in float32 only")


def _compiled(op: str) -> list[tuple[str, str, list]]:
    """(backend, device, marks) of each compiled backend with a kernel for `op` here."""
    from gls import native

    out = [("cpp", "cpu", [])] if native.has_kernel(op, "CPU") else []
    if native.has_kernel(op, "CUDA"):
        out.append(("cuda", "cuda", [pytest.mark.cuda]))
    if native.has_kernel(op, "CPU", "gls_cuda_emu"):
        out.append(("cuda-emu", "cpu", []))
    return out


def backend_params(op: str, *, reference: bool = False, float32_only_triton: bool = False) -> list:
    """pytest params of every Backend that runs `op` here."""
    out = [pytest.param(Backend(op, "reference", "cpu"), id="reference")] if reference else []
    out += [pytest.param(Backend(op, name, device), id=name, marks=marks) for name, device, marks in _compiled(op)]
    if HAS_TRITON:
        device = "cuda" if HAS_CUDA else "cpu"  # the interpreter on a CPU
        marks = [pytest.mark.cuda] if HAS_CUDA else []
        out.append(pytest.param(Backend(op, "triton", device, float32_only_triton), id="triton", marks=marks))
    return out


@dataclass(frozen=True)
class HelperOp:
    """A helper op (a fused backward kernel: gls::<op>, csrc only) on one backend: the torch op behind it
    and the device its tensors live on."""

    name: str
    backend: str  # cpp, cuda or cuda-emu
    device: str

    @property
    def op(self):
        return getattr(torch.ops.gls_cuda_emu if self.backend == "cuda-emu" else torch.ops.gls, self.name)


def helper_op_params(op: str) -> list:
    """pytest params of every HelperOp that runs the helper op `op` here (CUDA marked `cuda`)."""
    return [pytest.param(HelperOp(op, name, device), id=name, marks=marks) for name, device, marks in _compiled(op)]


def pytest_generate_tests(metafunc):
    op = getattr(metafunc.module, "OP", None)  # only op test modules: others may parametrize a `backend` of their own
    if op is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backend_params(
            op, reference=metafunc.definition.get_closest_marker("with_reference") is not None,
            float32_only_triton=getattr(metafunc.module, "TRITON_FLOAT32_ONLY", False)))


def pytest_collection_modifyitems(config, items):
    if "slow" not in (config.getoption("-m") or ""):
        larger = pytest.mark.skip(reason="a larger run: select it with -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(larger)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


_EMULATED: dict[str, dict[str, int]] = {}  # test module -> outcome -> count, of the emulated-CUDA tests


def _runs_emulated_cuda(report) -> bool:
    return "cuda-emu" in report.nodeid or "emulated_cuda" in report.nodeid or "test_cuda_emu.py" in report.nodeid


def pytest_runtest_logreport(report):
    if _runs_emulated_cuda(report) and (report.when == "call" or report.outcome != "passed"):
        counts = _EMULATED.setdefault(report.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py"), {})
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    """The emulated-CUDA tests executed per op (tests/test_<op>.py) and per whole-computation module."""
    if not _EMULATED:
        return
    terminalreporter.write_sep("-", "CUDA kernels run through the emulation (cuda-emu), per test module")
    for module, counts in sorted(_EMULATED.items()):
        terminalreporter.write_line(f"{module.removeprefix('test_'):<32} " + ", ".join(
            f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "skipped")))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, for the training-layer modules (pytestmark = usefixtures("one_thread")): on a
    shared 2-core machine torch's busy-waiting threads ran them 10x slower. Kernel tests keep the
    default count so the parallel paths are exercised."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
