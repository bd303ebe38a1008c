"""gls.app.heap: the commands keep freed memory in the process, so a step's large tensors reuse the pages
of the last step's instead of being faulted in and zeroed by the kernel again."""
import os
import subprocess
import sys

import pytest

from gls.app import heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is on Linux")

_PROBE = """
import resource, torch
from gls.app import heap
print(heap.keep_freed_memory())
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # a 64 MB tensor made, filled and freed, as a step's are
    before = faults()
    t = torch.ones(1 << 24)
    del t
    print(faults() - before)
"""


def _rounds(setting: str) -> tuple[str, list[int]]:
    env = dict(os.environ, GLS_KEEP_FREED_MEMORY=setting)
    run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    kept, *faults = run.stdout.split()
    return kept, [int(f) for f in faults]


def test_freed_pages_are_reused():
    """16,384 pages per 64 MB tensor: glibc's default maps fresh ones every time; with the heap kept the
    later rounds reuse freed ones (when written, the first five still grew the heap, then none)."""
    kept, faults = _rounds("1")
    if kept != "True":
        pytest.skip("the C library is not glibc")
    assert max(faults[-3:]) < 1000, faults
    default, faults = _rounds("0")
    assert default == "False" and min(faults) > 10000, faults


def test_the_setting_is_checked(monkeypatch):
    monkeypatch.setenv("GLS_KEEP_FREED_MEMORY", "yes")
    with pytest.raises(ValueError, match="GLS_KEEP_FREED_MEMORY must be 0 or 1"):
        heap.keep_freed_memory()
