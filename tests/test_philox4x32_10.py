"""philox4x32_10: known answers on every backend, kernels bit-identical to the reference, opcheck, errors."""
import pytest
import torch

from gls import native, noise
from gls.reference import noise as ref

OP = "philox4x32_10"

KNOWN_ANSWERS = [  # Random123 philox4x32-10 vectors: counter, key, output
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0], [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.with_reference
@pytest.mark.parametrize("counter,key,want", KNOWN_ANSWERS)
def test_known_answers(backend, counter, key, want):
    got = noise.philox4x32_10(torch.tensor(counter, device=backend.device), torch.tensor(key, device=backend.device), backend=backend.name)
    assert got.tolist() == want


def test_words_bit_identical_to_reference(backend):
    counter = torch.randint(0, 2**32, (3, 37, 4), dtype=torch.int64)
    key = torch.randint(0, 2**32, (3, 37, 2), dtype=torch.int64)
    counter[0, :2] = torch.tensor([[0xFFFFFFFF] * 4, [0] * 4])  # extremes
    got = noise.philox4x32_10(counter.to(backend.device), key.to(backend.device), backend=backend.name).cpu()
    assert torch.equal(got, ref.philox4x32_10(counter, key))


def test_key_broadcasts():
    counter = torch.randint(0, 2**32, (5, 4), dtype=torch.int64)
    key = torch.tensor([7, 9])
    assert torch.equal(noise.philox4x32_10(counter, key), ref.philox4x32_10(counter, key.expand(5, 2)))


def test_opcheck(backend):
    words = lambda *shape: torch.randint(0, 2**32, shape, device=backend.device)  # noqa: E731
    torch.library.opcheck(backend.torch_op().default, (words(5, 4), words(5, 2)))


def test_errors():
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\)"):
        noise.philox4x32_10(torch.tensor([-1, 0, 0, 0]), torch.tensor([0, 0]))


@pytest.mark.skipif(not native.has_kernel(OP, "CPU"), reason="gls._C not built")
def test_kernel_errors():
    with pytest.raises(RuntimeError, match="counter must have shape"):
        torch.ops.gls.philox4x32_10(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
