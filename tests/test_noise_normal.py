"""noise_normal: every backend against the reference, the stream's definition (block/lane layout, the
uniforms behind the normals), prefix and sub-range consistency, opcheck and errors."""
import pytest
import torch

from gls import native, noise
from gls.reference import noise as ref
from noise_cases import SEED_BIG

OP = "noise_normal"


@pytest.mark.parametrize("P,d,antithetic", [(1, 1, False), (1, 3, False), (3, 5, False), (4, 130, True), (2, 7, True)])
@pytest.mark.parametrize("seed", [0, SEED_BIG])
def test_normals_match_reference(backend, P, d, antithetic, seed):
    kw = dict(seed=seed, purpose=3, member_offset=11, antithetic=antithetic)
    got = noise.population_normal(P, d, device=backend.device, backend=backend.name, **kw).cpu()
    want = noise.population_normal(P, d, backend="reference", **kw)
    assert got.shape == (P, d) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=noise.NORMAL_ATOL)


def test_normal_uniform_words_are_the_contract(backend):
    """The uniforms behind the normals are exactly those of the u32 words: invert Box-Muller's radius."""
    n = noise.normal(64, seed=5, member=2, device=backend.device, backend=backend.name).cpu().view(-1, 2)
    blocks = torch.arange(16)
    counter = torch.stack([blocks, torch.zeros(16, dtype=torch.int64), torch.full((16,), 2), torch.zeros(16, dtype=torch.int64)], -1)
    words = ref.philox4x32_10(counter, torch.tensor([5, 0])).view(-1, 2)
    u_even = ref.uniform(words[:, 0])
    torch.testing.assert_close(n.square().sum(1), -2 * torch.log(u_even), rtol=1e-5, atol=1e-5)


def test_reference_stream_definition():
    """Element i of member m is lane i % 4 of block i // 4 (a block boundary: elements 8 and 9 are block 2)."""
    seed, m, q = 123456789012, 5, 2
    full = noise.normal(10, seed=seed, member=m, purpose=q, backend="reference")
    words = ref.philox4x32_10(torch.tensor([2, 0, m, q]), torch.tensor([seed & 0xFFFFFFFF, seed >> 32]))
    u = ref.uniform(words)
    r = torch.sqrt(-2 * torch.log(u[0]))
    t = u[1] * torch.tensor(6.2831855)
    assert torch.equal(full[8:10], torch.stack([r * torch.cos(t), r * torch.sin(t)]))
    assert ref.uniform(torch.tensor([0, 0xFFFFFFFF])).tolist() == [2.0**-25, 1.0]  # float32 rounding at the top


@pytest.mark.with_reference
def test_streams_are_prefix_and_subrange_consistent(backend):
    device = backend.device
    full = noise.population_normal(6, 37, seed=9, device=device, backend=backend.name).cpu()
    part = noise.population_normal(2, 21, seed=9, member_offset=3, device=device, backend=backend.name).cpu()
    assert torch.equal(part, full[3:5, :21])
    one = noise.normal(37, seed=9, member=4, device=device, backend=backend.name).cpu()
    assert torch.equal(one, full[4])
    anti = noise.population_normal(4, 37, seed=9, member_offset=2, antithetic=True, device=device, backend=backend.name).cpu()
    assert torch.equal(anti[:2], full[2:4]) and torch.equal(anti[2:], -full[2:4])


def test_purpose_and_seed_words_separate_streams():
    base = noise.normal(64, seed=1, member=0)
    for other in (noise.normal(64, seed=1, member=0, purpose=1), noise.normal(64, seed=1 + 2**32, member=0), noise.normal(64, seed=1, member=1)):
        assert (other - base).abs().max() > 0.5


def test_opcheck(backend):
    members = torch.arange(3, 6, device=backend.device)
    torch.library.opcheck(backend.torch_op().default, (members, 11, -3, 1, True))


def test_errors():
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="unsigned 64-bit"):
            noise.normal(4, seed=bad, member=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        noise.normal(4, seed=1.5, member=0)
    with pytest.raises(ValueError, match="d must be >= 1"):
        noise.normal(0, seed=1, member=0)
    with pytest.raises(ValueError, match="32-bit word"):
        noise.normal(4, seed=1, member=2**32)
    for call in (lambda: noise.population_normal(2, 2**63, seed=0),
                 lambda: noise.noise_weighted_sum(torch.ones(2), 0.1, 0, 2**63)):
        with pytest.raises(ValueError, match=r"d must be < 2\*\*63"):
            call()
    with pytest.raises(ValueError, match="exceed 2\\*\\*32"):
        noise.population_normal(4, 3, seed=1, member_offset=2**32 - 2)


@pytest.mark.skipif(not native.has_kernel(OP, "CPU"), reason="gls._C not built")
def test_kernel_errors():
    members = torch.arange(2)
    with pytest.raises(RuntimeError, match="d must be >= 1"):
        torch.ops.gls.noise_normal(members, 0, 0, 0, False)
    with pytest.raises(RuntimeError, match="members must be a 1-D int64"):
        torch.ops.gls.noise_normal(members.int(), 3, 0, 0, False)
