"""Closed-form tests of the solvers' update rules on f(theta) = 1/2 theta^T A theta.

A stub objective evaluates the quadratic at the (perturbed) parameter vector, so the
estimates have known expectations: f+ - f- = 2 eps z^T A theta, f+ - 2 f0 + f- = eps^2 z^T A z.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from zoexp.errors import ConfigError
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.spsa15 import SPSA15
from zoexp.solvers.subzero import SubZero
from zoexp.solvers.zo_adam import ZOAdam
from zoexp.solvers.zo_sgd_momentum import ZOSGDMomentum

DIM = 8


class Quadratic:
    """f(theta) = 1/2 theta^T A theta over the solver's parameters, flattened (float64 math)."""

    name, differentiable = "quadratic", True

    def __init__(self, params: list[torch.Tensor], A: torch.Tensor) -> None:
        self.params, self.A = params, A
        self.scorer = SimpleNamespace(forward_passes=0)

    def flat(self) -> torch.Tensor:
        return torch.cat([(p * 1).detach().reshape(-1) for p in self.params]).double()

    def loss(self, batch) -> float:
        self.scorer.forward_passes += 1
        with torch.no_grad():
            t = self.flat()
            return float(0.5 * t @ self.A @ t)

    def grad(self) -> torch.Tensor:
        return self.A @ self.flat()


def spd(dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    return q @ torch.diag(torch.linspace(0.5, 3.0, dim, dtype=torch.float64)) @ q.T


def make(cls, params=None, **kw):
    params = params if params is not None else [torch.nn.Parameter(torch.linspace(-1, 1, DIM))]
    solver = cls(steps=10, batch_size=1, **kw)
    numel = sum(p.numel() for p in params)
    objective = Quadratic(params, spd(numel))
    solver.setup(params, objective)
    return solver, objective


def flat_params(solver) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in solver.params]).double()


def one_step_estimates(solver, objective, trials: int) -> torch.Tensor:
    """The estimate g_hat of `trials` independent steps from the same theta (lr = 1)."""
    start = [p.detach().clone() for p in solver.params]
    out = []
    for t in range(trials):
        before = flat_params(solver)
        solver.step([None], t)
        out.append(before - flat_params(solver))
        with torch.no_grad():
            for p, s in zip(solver.params, start):
                p.copy_(s)
    return torch.stack(out)


# ---- spsa15 ------------------------------------------------------------------------------
def test_spsa15_curvature_is_zAz():
    solver, objective = make(SPSA15, n_perts=1, eps=0.5, lr=0.0)
    for step in range(5):
        result = solver.step([None], step)
        z = solver.directions.direction(solver.direction_seed(step, 0), 0).double()
        assert result.metrics["curvature"] == pytest.approx(float(z @ objective.A @ z), rel=1e-4)


@pytest.mark.parametrize("lambda_reg", [1e-3, 1e3])  # the saturated curvature wins / the floor wins
def test_spsa15_update_is_gradient_over_saturated_curvature(lambda_reg):
    solver, objective = make(SPSA15, n_perts=3, eps=0.5, lr=1.0, saturating_alpha=0.5, lambda_reg=lambda_reg)
    grad, before = objective.grad(), flat_params(solver)
    expected = torch.zeros(DIM, dtype=torch.float64)
    for k in range(3):
        z = solver.directions.direction(solver.direction_seed(0, k), 0).double()
        c = max(float(z @ objective.A @ z) ** 0.5, lambda_reg)
        expected += float(z @ grad) / c * z / 3
    solver.step([None], 0)
    torch.testing.assert_close(before - flat_params(solver), expected, rtol=1e-4, atol=1e-6)


# ---- n-SPSA statistics ---------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_spsa_estimate_is_unbiased_and_variance_falls_like_one_over_n(dist):
    """E[g_hat] = grad; E||g_hat - grad||^2 = c_dist ||grad||^2 / n with c = d + 1 (Gaussian),
    d - 1 (Rademacher) for d-dimensional z."""
    trials, mse = 300, {}
    for n in (1, 4, 16):
        solver, objective = make(SPSA, n_perts=n, eps=0.5, lr=1.0, dist=dist)
        grad = objective.grad()
        est = one_step_estimates(solver, objective, trials)
        per_trial = ((est - grad) ** 2).sum(1)
        mse[n] = per_trial.mean().item()
        # the mean of `trials` estimates is within 4 standard errors of the true gradient
        assert (est.mean(0) - grad).norm() < 4 * (per_trial.mean() / trials).sqrt()
        c = DIM + 1 if dist == "gaussian" else DIM - 1
        assert mse[n] * n / (c * grad.norm() ** 2).item() == pytest.approx(1.0, abs=0.3)
    assert 2.5 < mse[1] / mse[4] < 6.5 and 2.5 < mse[4] / mse[16] < 6.5


# ---- chained probes --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_chained_probes_equal_separate_perturb_move_restore(dtype):
    """probe_all fuses direction k's restore with k+1's perturbation (one sweep in place): the
    losses and the weights it leaves are bit-identical to perturb / move / restore per direction."""
    start = torch.linspace(-1, 1, 1000).to(dtype) * 0.37
    solver, objective = make(SPSA, params=[torch.nn.Parameter(start.clone())], n_perts=5,
                             eps=1e-2, exact=False)
    seeds, plus, minus = solver.probe_all([None], 3)
    chained = solver.params[0].detach().clone()
    sep, sep_obj = make(SPSA, params=[torch.nn.Parameter(start.clone())], n_perts=5, eps=1e-2,
                        exact=False)
    d, eps, expected = sep.directions, 1e-2, []
    for seed in seeds:
        d.perturb(seed, eps)
        f_plus = sep_obj.loss(None)
        d.move(seed, eps, -eps)
        expected.append((f_plus, sep_obj.loss(None)))
        d.restore(seed, -eps)
    assert list(zip(plus, minus)) == expected
    assert torch.equal(chained, sep.params[0].detach())
    assert objective.scorer.forward_passes == 10


# ---- MeZO in place: the next perturbation rides on the step's last sweep -------------------
def counting_sweeps(engine) -> list[int]:
    count, sweep = [0], engine._sweep

    def counted(op):
        count[0] += 1
        sweep(op)
    engine._sweep = counted
    return count


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mezo_in_place_carries_the_next_perturbation(dtype):
    """In place, a step's restore + update + the next step's perturbation are one sweep: 2 per
    step (+1 to start) instead of 3, and the losses and weights are bit-identical to perturb /
    move / restore_and_update step by step."""
    start = (torch.linspace(-1, 1, 1000) * 0.37).to(dtype)
    solver, _ = make(MeZO, params=[torch.nn.Parameter(start.clone())], eps=1e-2, lr=1e-2,
                     exact=False)
    solver.steps = 4
    sweeps = counting_sweeps(solver.engine)
    losses = [solver.step([None], t).loss for t in range(4)]
    assert sweeps[0] == 1 + 2 * 4 and solver.carried is None  # nothing carried past the last step
    ref, ref_objective = make(MeZO, params=[torch.nn.Parameter(start.clone())], eps=1e-2,
                              lr=1e-2, exact=False)
    d, expected = ref.engine, []
    for t in range(4):
        seed = ref.direction_seed(t)
        d.perturb(seed, 1e-2)
        plus = ref_objective.loss(None)
        d.move(seed, 1e-2, -1e-2)
        minus = ref_objective.loss(None)
        d.restore_and_update(seed, -1e-2, -1e-2 * (plus - minus) / 2e-2)
        expected.append((plus + minus) / 2)
    assert losses == expected
    assert torch.equal(solver.params[0].detach(), ref.params[0].detach())


def test_mezo_settle_takes_the_carried_perturbation_off():
    start = torch.linspace(-1, 1, DIM, dtype=torch.float64)
    solver, objective = make(MeZO, params=[torch.nn.Parameter(start.clone())], eps=1e-3, lr=0.0,
                             exact=False)
    solver.step([None], 0)
    carried = solver.carried
    assert carried == solver.direction_seed(1)
    z = solver.engine.direction(carried, 0).double()
    torch.testing.assert_close(solver.params[0].detach() - start, 1e-3 * z, rtol=0, atol=1e-12)
    solver.settle()
    assert solver.carried is None
    torch.testing.assert_close(solver.params[0].detach(), start, rtol=0, atol=1e-12)
    solver.step([None], 5)  # not the carried step: it perturbs from scratch
    assert solver.carried == solver.direction_seed(6)


# ---- SubZero ---------------------------------------------------------------------------
def subzero(rank=2, update_interval=3):
    params = [torch.nn.Parameter(torch.randn(6, 5, generator=torch.Generator().manual_seed(1))),
              torch.nn.Parameter(torch.zeros(4))]
    return make(SubZero, params=params, rank=rank, update_interval=update_interval, lr=1e-2)


def test_subzero_perturbation_is_rank_r_in_orthonormal_bases():
    solver, _ = subzero(rank=2)
    d = solver.low_rank
    d.use_subspace(0)
    u, v = d.bases[0]
    torch.testing.assert_close(u.T @ u, torch.eye(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(v.T @ v, torch.eye(2), atol=1e-5, rtol=0)
    for seed in range(5):
        z = d.direction(seed, 0)
        assert z.shape == (6, 5) and torch.linalg.matrix_rank(z).item() == 2
        torch.testing.assert_close(u @ u.T @ z @ v @ v.T, z, atol=1e-5, rtol=0)  # inside span(U) x span(V)
    assert torch.linalg.matrix_rank(d.direction(0, 0) + d.direction(1, 0)).item() <= 2
    assert d.direction(0, 1).shape == (4,)  # non-matrix: plain Gaussian


def test_subzero_bases_change_exactly_every_update_interval():
    solver, _ = subzero(update_interval=3)
    bases = []
    for step in range(9):
        solver.step([None], step)
        bases.append(solver.low_rank.bases[0][0].clone())
    for step in range(1, 9):
        same = torch.equal(bases[step], bases[step - 1])
        assert same == (step % 3 != 0), step


def test_subzero_rank_larger_than_a_layer_is_a_config_error():
    with pytest.raises(ConfigError, match="solver.rank"):
        subzero(rank=6)  # the 6 x 5 matrix has rank <= 5


@pytest.mark.parametrize("exact", [True, False])
def test_subzero_replay_matches_the_step(exact):
    solver, _ = subzero()
    solver.exact = exact
    solver.directions = solver.make_directions()
    start = [p.detach().clone() for p in solver.params]
    records = [solver.step([None], s).record for s in range(5)]
    trained = [p.detach().clone() for p in solver.params]
    assert not torch.equal(trained[0], start[0])
    with torch.no_grad():
        for p, s in zip(solver.params, start):
            p.copy_(s)
    for r in records:
        solver.replay(json.loads(json.dumps(r)))
    replayed = [p.detach() for p in solver.params]
    if exact:  # virtual perturbation: the update is the only write, as in the replay
        assert all(torch.equal(p, t) for p, t in zip(replayed, trained))
    else:      # in-place perturb / restore: float drift only
        for p, t in zip(replayed, trained):
            torch.testing.assert_close(p, t, rtol=0, atol=1e-6)


# ---- replay and forward passes -------------------------------------------------------------
@pytest.mark.parametrize("cls,kw", [(SPSA, {"n_perts": 3}), (SPSA15, {"n_perts": 3}),
                                    (ZOAdam, {"n_perts": 2}), (ZOSGDMomentum, {"n_perts": 2}),
                                    (SPSA, {"n_perts": 2, "dist": "rademacher", "weight_decay": 0.1})])
def test_replay_from_the_record_is_bit_exact(cls, kw):
    solver, objective = make(cls, lr=1e-2, **kw)
    start = [p.detach().clone() for p in solver.params]
    records = [json.loads(json.dumps(solver.step([None], s).record)) for s in range(4)]
    trained = [p.detach().clone() for p in solver.params]
    fresh, _ = make(cls, params=[torch.nn.Parameter(s.clone()) for s in start], lr=1e-2, **kw)
    for r in records:
        fresh.replay(r)
    assert all(torch.equal(a.detach(), b) for a, b in zip(fresh.params, trained))
    assert not torch.equal(trained[0], start[0])


@pytest.mark.parametrize("cls,kw,per_step", [(MeZO, {}, 2), (SPSA, {"n_perts": 5}, 10),
                                             (SPSA15, {"n_perts": 5}, 11), (SubZero, {"n_perts": 3, "rank": 1}, 6),
                                             (ZOAdam, {"n_perts": 2}, 4), (ZOSGDMomentum, {}, 2)])
def test_forward_passes_per_step(cls, kw, per_step):
    params = [torch.nn.Parameter(torch.ones(3, 2))]
    solver, objective = make(cls, params=params, lr=1e-3, **kw)
    for step in range(3):
        before = objective.scorer.forward_passes
        solver.step([None], step)
        assert objective.scorer.forward_passes - before == per_step


# ---- hyperparameter validation (no model) --------------------------------------------------
@pytest.mark.parametrize("cls,kw,field", [
    (SPSA, {"n_perts": 0}, "solver.n_perts"), (SPSA, {"eps": 0.0}, "solver.eps"),
    (SPSA, {"dist": "uniform"}, "solver.dist"), (SPSA15, {"saturating_alpha": 0.0}, "solver.saturating_alpha"),
    (SPSA15, {"saturating_alpha": 1.5}, "solver.saturating_alpha"), (SPSA15, {"lambda_reg": 0}, "solver.lambda_reg"),
    (SubZero, {"rank": 0}, "solver.rank"), (SubZero, {"rank": 16, "lora_rank": 8}, "solver.rank"),
    (SubZero, {"update_interval": 0}, "solver.update_interval"), (ZOAdam, {"beta2": 1.0}, "solver.beta2"),
    (ZOSGDMomentum, {"momentum": -0.1}, "solver.momentum"),
])
def test_bad_hyperparameters_raise_config_error(cls, kw, field):
    with pytest.raises(ConfigError) as err:
        cls(steps=1, **kw)
    assert err.value.field == field and "\n" not in str(err.value)


# ---- baselines -----------------------------------------------------------------------------
def test_icl_prepends_k_seeded_demonstrations():
    from tasks.base import Example
    from zoexp.solvers.icl import ICL

    train = [Example(prompt=f"train {i} It was", candidates=(" bad", " good"), label=i % 2) for i in range(10)]
    query = [Example(prompt=f"query {i} It was", candidates=(" bad", " good"), label=1) for i in range(3)]
    solver = ICL(k=3, separator=" || ", seed=7)
    solver.setup([], None, train)
    shown = solver.eval_examples(query)
    for ex, q in zip(shown, query):
        parts = ex.prompt.split(" || ")
        assert len(parts) == 4 and parts[-1] == q.prompt
        assert all(p in {t.prompt + t.candidates[t.label] for t in train} for p in parts[:3])
        assert ex.candidates == q.candidates and ex.label == q.label
    assert [e.prompt for e in solver.eval_examples(query)] == [e.prompt for e in shown]  # fixed draw
    with pytest.raises(ConfigError, match="solver.k"):
        ICL(k=11).setup([], None, train)


def test_first_order_refuses_a_non_differentiable_objective():
    from zoexp.solvers.fo_sgd import FOSGD

    with pytest.raises(ConfigError, match="objective"):
        FOSGD(steps=1, objective="accuracy")
    solver = FOSGD(steps=1)
    with pytest.raises(ConfigError, match="objective"):
        solver.setup([torch.nn.Parameter(torch.ones(2))], SimpleNamespace(differentiable=False, name="accuracy"))
