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


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_gpu_mezo_in_place_carry_matches_the_unfused_steps(dist):
    """On CUDA (Triton sweeps), MeZO in place with the next perturbation carried in each step's
    last sweep gives the same losses and bf16 weights, bit for bit, as perturb / move /
    restore_and_update step by step; and it trains. (The learning check reads the noise-free
    loss after 120 steps: expected ~0.64x of the start here, 0.58-0.71x over four targets on
    the CPU reference; the probes' mean after 40 steps sat at 0.83-0.89x, too close to a 0.9x
    bound to be a reliable check.)"""
    from types import SimpleNamespace

    from zoexp.solvers.mezo import MeZO

    torch.manual_seed(0)
    target = torch.randn(2, 128, device="cuda")
    start = (torch.randn(2, 128, device="cuda") * 0.5).to(torch.bfloat16)

    class Objective:
        def __init__(self, param):
            self.param, self.scorer = param, SimpleNamespace(forward_passes=0)

        def loss(self, batch):
            return float(((self.param.detach().float() - target) ** 2).mean())

    def fresh():
        param = torch.nn.Parameter(start.clone())
        solver = MeZO(steps=120, batch_size=1, lr=0.5, eps=1e-2, dist=dist, exact=False)
        objective = Objective(param)
        solver.setup([param], objective)
        return solver, objective, param

    solver, _, param = fresh()
    assert solver.engine.kernels.__name__ == "kernels.sweep"
    start_loss = float(((start.float() - target) ** 2).mean())
    losses = [solver.step(None, t).loss for t in range(120)]
    ref, objective, ref_param = fresh()
    expected = []
    for t in range(120):
        seed, e = ref.direction_seed(t), ref.engine
        e.perturb(seed, 1e-2)
        plus = objective.loss(None)
        e.move(seed, 1e-2, -1e-2)
        minus = objective.loss(None)
        e.restore_and_update(seed, -1e-2, -0.5 * (plus - minus) / 2e-2)
        expected.append((plus + minus) / 2)
    assert losses == expected
    assert torch.equal(param, ref_param)
    assert objective.loss(None) < 0.8 * start_loss
