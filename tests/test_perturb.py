"""The perturbation engine: bit-exact restore, fused == unfused, API misuse, and why in-place
perturbation of 16-bit weights cannot restore exactly (exhaustive over all bit patterns)."""

import copy
import os

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of kernels.sweep

from kernels.philox import z_reference  # noqa: E402
from zoexp.perturb import ExactDirections, PerturbationEngine  # noqa: E402

LOW = (torch.bfloat16, torch.float16)


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(),
                      nn.Linear(16, 32))
    m[4].weight = m[0].weight           # tied, like an LM head
    return m.to(dtype)


class _Float32Linear(nn.Module):
    """A linear layer that keeps 16-bit weights but multiplies in fp32 (CPU bf16 GEMMs are slow)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        return x.float() @ self.weight.float().T + self.bias.float()


def _inputs():
    return torch.randint(0, 32, (4, 5), generator=torch.Generator().manual_seed(0))


def _mezo_cycles(model, engine, n, eps=1e-3, coef=0.0, x=None):
    x = _inputs() if x is None else x
    with torch.no_grad():
        for seed in range(n):
            engine.perturb(seed, eps)
            model(x)
            engine.move(seed, eps, -eps)
            model(x)
            engine.restore_and_update(seed, -eps, coef)


@pytest.mark.parametrize("dtype,dist", [(torch.bfloat16, "gaussian"), (torch.float16, "gaussian"),
                                        (torch.float16, "rademacher")])
def test_1000_cycles_leave_weights_bit_identical(dtype, dist):
    torch.manual_seed(0)
    model = _Float32Linear(8, 4).to(dtype)
    start = copy.deepcopy(model.state_dict())
    engine = PerturbationEngine(list(model.parameters()), dist=dist)
    _mezo_cycles(model, engine, 1000, x=torch.randn(3, 8))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())
    assert all(type(p) is nn.Parameter for p in model.parameters())


@pytest.mark.parametrize("dtype", LOW)
def test_naive_inplace_cycles_drift(dtype):
    torch.manual_seed(0)
    model = _Float32Linear(8, 4).to(dtype)
    start = [p.detach().clone() for p in model.parameters()]
    engine = PerturbationEngine(list(model.parameters()), dist="gaussian", exact=False)
    _mezo_cycles(model, engine, 100, x=torch.randn(3, 8))
    changed = sum((p != s).sum().item() for p, s in zip(model.parameters(), start))
    assert changed > 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", LOW)
def test_forward_sees_correctly_rounded_perturbation(dtype, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    model = _model(dtype)
    params = list(model.parameters())
    manual = copy.deepcopy(model)
    offset = 0
    with torch.no_grad():
        for p in manual.parameters():
            z = z_reference(9, offset, p.numel(), "gaussian").view_as(p)
            p.copy_((p.float() + torch.tensor(1e-2) * z).to(dtype))
            offset += p.numel()
        engine = PerturbationEngine(params, dist="gaussian", backend=backend)
        engine.perturb(9, 1e-2)
        got = model(_inputs())
        weight_t = model[1].weight.T.clone()     # a value property is perturbed too
        raw = model[1].weight.data.clone()       # .data is the stored, unperturbed tensor
        engine.restore(9, 1e-2)
        assert torch.equal(got, manual(_inputs()))
        assert torch.equal(weight_t, manual[1].weight.T)
        assert torch.equal(raw, model[1].weight)
        assert not torch.equal(got, model(_inputs()))


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("dtype", LOW)
def test_fused_equals_unfused(dtype, exact):
    def run(fused: bool):
        model = _model(dtype)
        e = PerturbationEngine(list(model.parameters()), dist="rademacher", exact=exact)
        e.perturb(1, 1e-2)
        if fused:
            e.move(1, 1e-2, -1e-2)
            e.restore_update_perturb(1, -1e-2, 3e-3, 1e-2, next_seed=2, next_scale=1e-2)
            e.restore_and_update(2, 1e-2, -2e-3)
        else:
            e.restore(1, 1e-2)
            e.perturb(1, -1e-2)
            e.restore(1, -1e-2)
            e.update(1, 3e-3, 1e-2)
            e.perturb(2, 1e-2)
            e.restore(2, 1e-2)
            e.update(2, -2e-3)
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(True), run(False)))


@pytest.mark.parametrize("dtype", LOW)
def test_exact_update_is_the_rounded_zo_step(dtype):
    model = _model(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    engine = PerturbationEngine(list(model.parameters()), dist="gaussian")
    _mezo_cycles(model, engine, 1, coef=0.05)
    offset = 0
    for b, p in zip(before, model.parameters()):
        z = z_reference(0, offset, p.numel(), "gaussian").view_as(p)
        assert torch.equal(p, (b.float() + torch.tensor(0.05) * z).to(dtype))
        offset += p.numel()


def test_packed_direction_works_like_its_seed():
    a, b = _model(torch.bfloat16), _model(torch.bfloat16)
    ea = PerturbationEngine(list(a.parameters()), dist="rademacher", exact=False)
    eb = PerturbationEngine(list(b.parameters()), dist="rademacher", exact=False)
    packed = eb.pack(4)
    ea.perturb(4, 1e-2)
    ea.restore_and_update(4, 1e-2, 1e-3)
    eb.perturb(packed, 1e-2)
    eb.restore_and_update(packed, 1e-2, 1e-3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_misuse_is_reported():
    model = _model(torch.float32)
    engine = PerturbationEngine(list(model.parameters()))
    with pytest.raises(ValueError):
        PerturbationEngine(list(model.parameters()), dist="uniform")
    engine.perturb(1, 1e-3)
    with pytest.raises(RuntimeError):
        engine.restore(1, 2e-3)
    with pytest.raises(RuntimeError):
        engine.update(1, 1e-3)
    with pytest.raises(RuntimeError):
        engine.perturb(2, 1e-3)
    engine.restore(1, 1e-3)
    with pytest.raises(ValueError):
        engine.pack(1)   # Gaussian directions cannot be packed


class _LowRank:
    """Seeded rank-2 directions U S V^T for matrices (like SubZero's), updated in place."""

    def __init__(self, params):
        self.params = params

    def direction(self, seed, index):
        p, g = self.params[index], torch.Generator().manual_seed(seed * 100 + index)
        if p.dim() != 2:
            return torch.randn(p.shape, generator=g)
        u, s, v = (torch.randn(p.shape[0], 2, generator=g), torch.randn(2, 2, generator=g),
                   torch.randn(p.shape[1], 2, generator=g))
        return u @ s @ v.T

    @torch.no_grad()
    def update(self, seed, coef, decay=0.0):
        for i, p in enumerate(self.params):
            p.copy_(((1 - decay) * p.float() + coef * self.direction(seed, i)).to(p.dtype))


@pytest.mark.parametrize("dtype", LOW)
def test_exact_directions_wrap_low_rank_directions(dtype):
    torch.manual_seed(0)
    model = _Float32Linear(8, 4).to(dtype)
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    low_rank = _LowRank(params)
    exact = ExactDirections(params, low_rank)
    x = torch.randn(3, 8)
    with torch.no_grad():
        exact.perturb(5, 1e-2)
        got = model(x)
        exact.restore(5, 1e-2)
        manual = copy.deepcopy(model)
        for i, p in enumerate(manual.parameters()):
            p.copy_((p.float() + torch.tensor(1e-2) * low_rank.direction(5, i)).to(dtype))
        assert torch.equal(got, manual(x))
        for seed in range(200):
            exact.perturb(seed, 1e-3)
            model(x)
            exact.move(seed, 1e-3, -1e-3)
            model(x)
            exact.restore_and_update(seed, -1e-3, 0.0)
    assert all(torch.equal(p, s) for p, s in zip(params, start))


def test_engine_follows_replaced_storage():
    """`p.data = ...` (e.g. `module.to`) after the engine is built: updates reach the new data."""
    p = nn.Parameter(torch.zeros(10))
    engine = PerturbationEngine([p])
    p.data = torch.ones(10)
    engine.update(1, 0.0, decay=0.5)
    assert torch.equal(p.detach(), torch.full((10,), 0.5))


def test_kept_sweep_plans_follow_replaced_storage():
    """The Triton backend keeps its launch plans (pointer tables) between sweeps; after
    `p.data = ...` they are rebuilt: updates reach the new storage, and a perturbed read of a
    small (cached) tensor sees it too."""
    pytest.importorskip("triton")
    p, q = nn.Parameter(torch.zeros(16)), nn.Parameter(torch.zeros(300))
    engine = PerturbationEngine([p, q], backend="triton")
    engine.update(1, 0.0, decay=0.5)
    engine.perturb(2, 0.0)
    engine.restore(2, 0.0)
    p.data, q.data = torch.ones(16), torch.ones(300)
    engine.update(1, 0.0, decay=0.5)
    assert torch.equal(p.detach(), torch.full((16,), 0.5))
    assert torch.equal(q.detach(), torch.full((300,), 0.5))
    engine.perturb(2, 0.0)
    seen = p * 1.0
    engine.restore(2, 0.0)
    assert torch.equal(seen, torch.full((16,), 0.5))


def test_backend_is_torch_on_cpu():
    from kernels import reference
    engine = PerturbationEngine([torch.zeros(3)])
    assert engine.kernels is reference


# ---- why not in place: exhaustive checks over every 16-bit pattern ---------------------------

_MANT = {torch.bfloat16: 7, torch.float16: 10}
_EMIN = {torch.bfloat16: -126, torch.float16: -14}


def _all_finite(dtype):
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    w = bits.view(dtype)
    return w[torch.isfinite(w)]


def _ulp(x: torch.Tensor, dtype) -> torch.Tensor:
    e = torch.frexp(x.abs())[1] - 1
    return torch.pow(2.0, e.clamp(min=_EMIN[dtype]) - _MANT[dtype]).to(torch.float64)


def _quantised_step(w: torch.Tensor, d: float) -> torch.Tensor:
    """Candidate: step d truncated toward zero to the grid of the larger-magnitude endpoint."""
    x = w.double()
    u = _ulp(torch.maximum(x.abs(), (x + d).abs()), w.dtype)
    return (x + torch.trunc(d / u) * u).to(w.dtype)


D_VALUES = [s * 10 ** (k / 2) for k in range(-10, -1) for s in (1, -1)]   # 1e-5 .. 0.03


@pytest.mark.parametrize("dtype", LOW)
def test_inplace_candidates_are_not_injective(dtype):
    """Perturbing in place restores exactly only if the map w -> p is injective; neither
    round-to-nearest nor the quantised-step candidate is, for any tested step d."""
    w = _all_finite(dtype)
    for d in D_VALUES:
        naive = (w.double() + d).to(dtype)
        restored = (naive.double() - d).to(dtype)
        assert (restored != w).any(), d
        for p in (naive, _quantised_step(w, d)):
            finite = torch.isfinite(p)
            distinct = torch.unique(p[finite].view(torch.int16)).numel()
            assert distinct < int(finite.sum()), d
