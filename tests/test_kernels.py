"""Kernels vs their torch references (Triton through TRITON_INTERPRET=1 when there is no GPU).

z must be a pure function of (seed, global element index): the same from the Triton kernel and
the reference, under any split of the parameters into tensors, block size or chunking.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of kernels.sweep
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from kernels import reference as R  # noqa: E402
from kernels import sweep as K  # noqa: E402
from kernels.philox import philox4x32, z_reference  # noqa: E402
from kernels.sweep_op import DeviceScalars, SweepOp  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DISTS = ("rademacher", "gaussian")


def test_philox_known_answer():
    """Random123's published answer for Philox4x32-10, counter 0 and key 0."""
    out = philox4x32(0, torch.zeros(1, dtype=torch.int64))
    assert [int(w) for w in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@triton.jit
def _randint4x_kernel(out_ptr, seed, N: tl.constexpr):
    offs = tl.arange(0, N)
    r0, r1, r2, r3 = tl.randint4x(seed, offs)
    tl.store(out_ptr + offs * 4, r0.to(tl.int32, bitcast=True))
    tl.store(out_ptr + offs * 4 + 1, r1.to(tl.int32, bitcast=True))
    tl.store(out_ptr + offs * 4 + 2, r2.to(tl.int32, bitcast=True))
    tl.store(out_ptr + offs * 4 + 3, r3.to(tl.int32, bitcast=True))


@pytest.mark.parametrize("seed", [0, 12345, 2**31 - 1, 2**40 + 7])
def test_reference_philox_matches_triton_randint4x(seed):
    out = torch.empty(64, 4, dtype=torch.int32, device=DEVICE)
    _randint4x_kernel[(1,)](out, seed, N=64)
    ref = torch.stack(philox4x32(seed, torch.arange(64)), dim=-1)
    assert torch.equal(out.cpu().to(torch.int64) & 0xFFFFFFFF, ref)


def _tensors(dtype, sizes=(300, 5000, 77, 128 * 40)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=g).to(dtype).to(DEVICE) for n in sizes]


OPS = [
    SweepOp(seed1=5, perturb_scale=1e-3),
    SweepOp(seed1=5, restore_scale=-2e-3, perturb_scale=3e-3),
    SweepOp(seed1=5, restore_scale=1e-3, coef=1e-2, decay=0.1, perturb_scale=2e-3, seed2=9),
    SweepOp(seed1=6, coef=-3e-4, stochastic=True),
]


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_reference(dtype, dist, grouped, monkeypatch):
    monkeypatch.setattr(K, "OWN_LAUNCH_NUMEL", 1 << 62 if grouped else 0)
    offsets = [13, 313, 5313, 5390]
    for op in OPS:
        a, b = _tensors(dtype), _tensors(dtype)
        K.sweep(a, offsets, op, dist)
        R.sweep(b, offsets, op, dist)
        for x, y in zip(a, b):
            if dist == "rademacher" or dtype != torch.float32:
                # bit-identical; Gaussian 16-bit results agree except on the rare rounding tie
                mismatch = (x != y).float().mean().item()
                assert mismatch == 0.0 if dist == "rademacher" else mismatch < 1e-3
            else:
                torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("dist", DISTS)
def test_device_scalars_sweep_like_arguments(dist, grouped, monkeypatch):
    """The seeds and scales read from a DeviceScalars tensor (what a CUDA graph replays) give
    the same bits as the same values passed as arguments; the reference reads them too. A
    second write changes what the same op object sweeps with."""
    monkeypatch.setattr(K, "OWN_LAUNCH_NUMEL", 1 << 62 if grouped else 0)
    offsets = [13, 313, 5313, 5390]
    for op in OPS:
        a, b, c = _tensors(torch.bfloat16), _tensors(torch.bfloat16), _tensors(torch.bfloat16)
        scalars = DeviceScalars(DEVICE)
        K.sweep(a, offsets, op, dist)
        K.sweep(b, offsets, scalars.write(op), dist)
        R.sweep(c, offsets, DeviceScalars(DEVICE).write(op), dist)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        ref = _tensors(torch.bfloat16)
        R.sweep(ref, offsets, op, dist)
        assert all(torch.equal(x, y) for x, y in zip(c, ref))
    op = SweepOp(seed1=0, perturb_scale=0.0)
    scalars = DeviceScalars(DEVICE)
    dev_op = scalars.write(op)
    scalars.write(SweepOp(seed1=77, perturb_scale=0.5))    # same tensor, new values
    a, b = _tensors(torch.float32), _tensors(torch.float32)
    K.sweep(a, offsets, dev_op, dist)
    K.sweep(b, offsets, SweepOp(seed1=77, perturb_scale=0.5), dist)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_aligned_and_unaligned_tensors_in_one_sweep():
    """Tensors whose addresses, sizes and start shifts allow 16-byte accesses go through the
    aligned table, the others through the plain one (two launches); both as the reference."""
    sizes = [256, 1024, 77, 4096, 300]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += n
    assert [K._aligned(t, o, t) for t, o in zip(_tensors(torch.bfloat16, sizes), offsets)] == [
        True, True, False, False, False]  # 77 elements; then every start shift is off by 77
    flat = torch.randn(total + 1).to(torch.bfloat16).to(DEVICE)
    views = [flat[1 + o:1 + o + n] for o, n in zip(offsets, sizes)]   # 2-byte-misaligned views
    for dist in DISTS:
        for tensors in (_tensors(torch.bfloat16, sizes), views):
            a = [t.clone() for t in tensors]
            b = [t.clone().cpu() for t in tensors]
            op = SweepOp(seed1=4, restore_scale=1e-3, perturb_scale=-2e-3, seed2=5)
            K.sweep(a, offsets, op, dist)
            R.sweep(b, offsets, op, dist)
            for x, y in zip(a, b):
                mismatch = (x.cpu() != y).float().mean().item()
                assert mismatch == 0.0 if dist == "rademacher" else mismatch < 1e-3
    assert not any(K._aligned(v, o, v) for v, o in zip(views, offsets))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounding_ties_go_to_even(dtype):
    """x +- half an ulp lands exactly between two 16-bit values: the kernel (the GPU's own
    conversion, or rounding by hand in the interpreter) and the reference both pick the one
    with the even mantissa, as worked out here from the mantissa index."""
    mant = 7 if dtype == torch.bfloat16 else 10
    ulp, j = 2.0 ** -mant, torch.arange(2 ** mant, dtype=torch.float32)
    x = torch.cat([1 + j * ulp, -(1 + j * ulp)])
    z = z_reference(5, 0, x.numel(), "rademacher")
    op = SweepOp(seed1=5, perturb_scale=ulp / 2)
    kernel, ref = x.to(dtype).to(DEVICE), x.to(dtype)
    K.sweep([kernel], [0], op, "rademacher")
    R.sweep([ref], [0], op, "rademacher")
    steps = torch.cat([j, j]) + 0.5 * z * x.sign()          # the tie, in ulps above 1
    lo = torch.floor(steps)
    even = torch.where(lo % 2 == 0, lo, lo + 1)
    expected = torch.where(steps < 0, 1 - ulp / 2, 1 + even * ulp) * x.sign()  # below 1: exact
    assert (steps >= 0).sum() > 2 ** mant                     # mostly true ties
    assert torch.equal(kernel.cpu().float(), expected)
    assert torch.equal(ref.float(), expected)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("gaussian_w", [4, 128])
def test_kernel_z_equals_reference_z(dist, gaussian_w, monkeypatch):
    monkeypatch.setattr(K, "GAUSSIAN_W", gaussian_w)
    out = torch.empty(3000, device=DEVICE)
    K.sweep([torch.zeros(3000, device=DEVICE)], [1000003], SweepOp(seed1=11, perturb_scale=1.0),
            dist, out=[out])
    ref = z_reference(11, 1000003, 3000, dist)
    if dist == "rademacher":
        assert torch.equal(out.cpu(), ref)
    else:
        torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("impl", [K, R])
def test_z_independent_of_split(dist, impl):
    """One tensor of 7000 elements vs the same space cut at odd places into three tensors."""
    whole = torch.zeros(7000, device=DEVICE)
    parts = [torch.zeros(n, device=DEVICE) for n in (129, 4000, 2871)]
    op = SweepOp(seed1=3, perturb_scale=1.0)
    impl.sweep([whole], [0], op, dist)
    impl.sweep(parts, [0, 129, 4129], op, dist)
    assert torch.equal(whole, torch.cat(parts))
    # a shard that starts at element 129 generates the same z on its own
    shard = torch.zeros(4000, device=DEVICE)
    impl.sweep([shard], [129], op, dist)
    assert torch.equal(shard, parts[1])


def test_reference_chunking_does_not_change_z(monkeypatch):
    a, b = torch.zeros(1000), torch.zeros(1000)
    op = SweepOp(seed1=4, perturb_scale=1.0)
    R.sweep([a], [77], op, "gaussian")
    monkeypatch.setattr(R, "CHUNK", 97)
    R.sweep([b], [77], op, "gaussian")
    assert torch.equal(a, b)


@pytest.mark.parametrize("dist", DISTS)
def test_z_statistics(dist):
    z = z_reference(2024, 0, 1 << 16, dist).double()
    assert abs(z.mean().item()) < 5 / 256          # 5 standard errors
    assert abs(z.var().item() - 1.0) < 0.03
    if dist == "gaussian":
        assert abs(((z ** 4).mean() - 3.0).item()) < 0.15  # kurtosis of a normal
    else:
        assert set(z.unique().tolist()) == {-1.0, 1.0}
    # different seeds, and neighbouring seeds, give uncorrelated directions
    z2 = z_reference(2025, 0, 1 << 16, dist).double()
    assert abs((z * z2).mean().item()) < 5 / 256


@pytest.mark.parametrize("impl", [K, R])
def test_pack_unpack_roundtrip(impl):
    n = 128 * 37
    words = impl.pack_rademacher(21, 37, DEVICE)
    assert words.shape == (37, 4) and words.dtype == torch.int32
    signs = impl.unpack_rademacher(words, n)
    assert torch.equal(signs.cpu(), z_reference(21, 0, n, "rademacher"))


@pytest.mark.parametrize("impl", [K, R])
def test_packed_direction_sweeps_like_its_seed(impl):
    words = impl.pack_rademacher(21, 83, DEVICE)  # covers elements [0, 10510)
    a, b = _tensors(torch.bfloat16), _tensors(torch.bfloat16)
    offsets = [13, 313, 5313, 5390]
    impl.sweep(a, offsets, SweepOp(seed1=21, restore_scale=1e-3, perturb_scale=2e-3), "rademacher")
    impl.sweep(b, offsets, SweepOp(seed1=21, packed1=words, restore_scale=1e-3,
                                   perturb_scale=2e-3), "rademacher")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased(dtype):
    """Updates of 1/8 ulp survive on average with stochastic rounding, vanish without."""
    n, coef = 1 << 16, 2.0 ** -10     # ulp of bf16 at 1.0 is 2^-7; of fp16 2^-10 -> use 2^-13
    coef = coef if dtype == torch.bfloat16 else 2.0 ** -13
    z = z_reference(8, 0, n, "rademacher").to(DEVICE)
    for impl in (K, R):
        for stochastic in (True, False):
            w = torch.ones(n, dtype=dtype, device=DEVICE)
            impl.sweep([w], [0], SweepOp(seed1=8, coef=coef, stochastic=stochastic), "rademacher")
            est = ((w.double() - 1.0) * z.double()).mean().item()   # E[(w' - w) z] = coef
            if stochastic:
                assert abs(est - coef) < 0.1 * coef, est
            else:
                assert est == 0.0


def test_stochastic_rounding_kernel_matches_reference():
    for dtype in (torch.bfloat16, torch.float16):
        a, b = _tensors(dtype), _tensors(dtype)
        op = SweepOp(seed1=3, coef=1e-4, decay=1e-3, stochastic=True)
        K.sweep(a, [0, 300, 5300, 5377], op, "rademacher")
        R.sweep(b, [0, 300, 5300, 5377], op, "rademacher")
        assert all(torch.equal(x, y) for x, y in zip(a, b))
