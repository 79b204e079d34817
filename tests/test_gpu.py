"""The Triton kernels on a real GPU against the torch reference (skipped without CUDA)."""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton")
    from kernels import reference, sweep
    return sweep, reference


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_kernel_matches_reference(kernels, dtype, dist):
    from kernels.sweep_op import SweepOp
    K, R = kernels
    sizes = [5_000_000, 4099, 1, 300_001]                  # one large launch, one grouped launch
    offsets = [7, 5_000_007, 5_004_106, 5_004_107]
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(n, generator=g).to(dtype) * 0.02 for n in sizes]
    op = SweepOp(seed1=3, restore_scale=1e-3, coef=1e-4, decay=1e-2, stochastic=True,
                 perturb_scale=-1e-3, seed2=4)
    gpu = [t.cuda() for t in base]
    K.sweep(gpu, offsets, op, dist)
    R.sweep(base, offsets, op, dist)
    for x, y in zip(gpu, base):
        mismatch = (x.cpu() != y).float().mean().item()
        if dist == "rademacher":
            assert mismatch == 0.0
        elif dtype == torch.float32:   # GPU fast sin/cos vs libm: |dz| ~ 1e-6
            torch.testing.assert_close(x.cpu(), y, rtol=0, atol=1e-6)
        else:                          # ... which flips a 16-bit rounding only rarely
            assert mismatch < 1e-3


def test_gpu_exact_engine_cycles():
    from zoexp.perturb import PerturbationEngine
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(1000, 256), torch.nn.Linear(256, 256),
                                torch.nn.LayerNorm(256)).cuda().to(torch.bfloat16)
    start = [p.detach().clone() for p in model.parameters()]
    engine = PerturbationEngine(list(model.parameters()), dist="gaussian")
    assert engine.kernels.__name__ == "kernels.sweep"
    x = torch.randint(0, 1000, (8, 16), device="cuda")
    with torch.no_grad():
        for seed in range(200):
            engine.perturb(seed, 1e-3)
            plus = model(x)
            engine.move(seed, 1e-3, -1e-3)
            minus = model(x)
            engine.restore_and_update(seed, -1e-3, 0.0)
            assert not torch.equal(plus, minus)
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start))


def test_gpu_pack_matches_regeneration(kernels):
    from kernels.philox import z_reference
    K, _ = kernels
    words = K.pack_rademacher(5, 1000, "cuda")
    assert torch.equal(K.unpack_rademacher(words, 128_000).cpu(),
                       z_reference(5, 0, 128_000, "rademacher"))
