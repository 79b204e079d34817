"""ZO-Muon, ZO-AdaMU and SubZero-AdaMU against their update rules, written out here.

The objective is tests/test_solvers.py's quadratic f(theta) = 1/2 theta^T A theta, so every
finite difference has a closed form: f(theta + eps Z) - f(theta - eps Z) = 2 eps Z^T A theta,
f(theta + eps Z) - f(theta) = eps Z^T A theta + eps^2 / 2 Z^T A Z. The random draws ("known z")
are read from the solvers' seeded direction objects; everything else -- the subspace estimate,
Newton-Schulz, the momentum mixture, the second moment, the annealing schedule -- is computed
here from the published rules, in float64.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.test_solvers import make
from zoexp.errors import ConfigError
from zoexp.solvers.subzero_adamu import SubZeroAdaMU
from zoexp.solvers.zo_adamu import ZOAdaMU
from zoexp.solvers.zo_muon import ZOMuon


def params_6x5_and_4():
    g = torch.Generator().manual_seed(1)
    return [torch.nn.Parameter(torch.randn(6, 5, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def split(vector: torch.Tensor, like) -> list[torch.Tensor]:
    out, start = [], 0
    for p in like:
        out.append(vector[start:start + p.numel()].reshape(p.shape))
        start += p.numel()
    return out


def weights(solver) -> list[torch.Tensor]:
    return [p.detach().clone().double() for p in solver.params]


# ---- ZO-Muon -------------------------------------------------------------------------------
def quintic_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's iteration as published (Jordan et al.): X <- a X + b (X X^T) X + c (X X^T)^2 X
    on the Frobenius-normalised matrix, wide side last."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    transposed = x.shape[0] > x.shape[1]
    x = (x.T if transposed else x) / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + b * s @ x + c * s @ s @ x
    return x.T if transposed else x


def muon_solver(**kw):
    defaults = dict(rank=2, update_interval=3, n_perts=3, eps=1e-2, lr=0.05, vector_lr=0.01)
    return make(ZOMuon, params=params_6x5_and_4(), **{**defaults, **kw})


@pytest.mark.parametrize("perturbation", ["one_side", "two_side"])
def test_zo_muon_update_is_the_orthogonalised_subspace_estimate(perturbation):
    solver, objective = muon_solver(perturbation=perturbation)
    A, eps, n = objective.A, 1e-2, 3
    for step in range(4):  # steps 0-2 share a subspace, step 3 draws a new one
        theta = weights(solver)
        t = flat(theta)
        solver.low_rank.use_subspace(step // 3)
        P = solver.low_rank.bases[0].double()
        Z = [[solver.low_rank.direction(solver.direction_seed(step, k), i).double() for i in range(2)]
             for k in range(n)]
        g = []
        for zk in Z:
            z = flat(zk)
            g.append(float(z @ A @ t) + (0.5 * eps * float(z @ A @ z) if perturbation == "one_side" else 0.0))
        R = sum(gk * (P.T @ zk[0]) for gk, zk in zip(g, Z)) / n  # U_k = P^T Z_k (P orthonormal)
        expected = [theta[0] - 0.05 * P @ quintic_newton_schulz(R),
                    theta[1] - 0.01 * sum(gk * zk[1] for gk, zk in zip(g, Z)) / n]
        solver.step([None], step)
        for got, want in zip(weights(solver), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_zo_muon_directions_live_in_a_fresh_orthonormal_column_subspace_every_interval():
    solver, _ = muon_solver()
    d, bases = solver.low_rank, []
    for step in range(7):
        solver.step([None], step)
        P = d.bases[0]
        torch.testing.assert_close(P.T @ P, torch.eye(2), atol=1e-5, rtol=0)
        z = d.direction(solver.direction_seed(step, 0), 0)
        torch.testing.assert_close(P @ P.T @ z, z, atol=1e-5, rtol=0)  # Z = P U: in span(P)
        bases.append(P.clone())
    for step in range(1, 7):
        assert torch.equal(bases[step], bases[step - 1]) == (step % 3 != 0), step


def test_zo_muon_step_is_a_near_orthogonal_matrix_in_the_subspace():
    """NS5 leaves the subspace estimate's singular values near 1 (Muon's spectral step)."""
    solver, _ = muon_solver(lr=1.0, rank=3)
    before = weights(solver)[0]
    solver.step([None], 0)
    change = before - weights(solver)[0]
    s = torch.linalg.svdvals(change)
    assert s[:3].min() > 0.5 and s[:3].max() < 1.5 and s[3:].max() < 1e-5  # rank 3, spectral ~1


@pytest.mark.parametrize("perturbation,per_step", [("one_side", 5), ("two_side", 8)])
def test_zo_muon_forward_passes(perturbation, per_step):
    solver, objective = muon_solver(perturbation=perturbation, n_perts=4)
    for step in range(3):
        before = objective.scorer.forward_passes
        solver.step([None], step)
        assert objective.scorer.forward_passes - before == per_step


# ---- ZO-AdaMU ------------------------------------------------------------------------------
def cosine_schedule(t: int, target: float, t1: int, t2: int, t3: int) -> float:
    if t < t1:
        return 1.0
    return target + (1 - target) * (1 + math.cos(math.pi * (min(t, t2) - t1) / (t3 - t1))) / 2


def adamu_reference(solver, objective, steps, noise, T, targets, eps, lr, gaussian_param, denominator,
                    sigma=1e-8, before_step=None):
    """Run `steps` ZO-AdaMU steps of `solver` and check each against the rule, in float64."""
    A = objective.A
    momentum = [torch.zeros(p.shape, dtype=torch.float64) for p in solver.params]
    for t in range(steps):
        if before_step:
            before_step(t)
        alpha, beta1, beta2 = (cosine_schedule(t, targets[k], *T) for k in ("alpha", "beta1", "beta2"))
        s1 = math.sqrt(alpha) if gaussian_param == "std" else alpha ** 0.25
        s2 = math.sqrt(1 - alpha) if gaussian_param == "std" else (1 - alpha) ** 0.25
        theta = weights(solver)
        result = solver.step([None], t)
        seed1, seed2 = result.record["seeds"]
        assert seed1 == solver.direction_seed(t, 0) and seed2 != seed1
        z1 = [s1 * noise.direction(seed1, i).double() for i in range(len(theta))]
        z2 = [m + s2 * noise.direction(seed2, i).double() for i, m in enumerate(momentum)]
        m = [beta1 * a + (1 - beta1) * b for a, b in zip(z1, z2)]
        g = float(flat(m) @ A @ flat(theta))  # (f(+) - f(-)) / (2 eps) for the quadratic
        assert result.record["proj_grad"] == pytest.approx(g, rel=1e-4, abs=1e-6)
        for p_new, p_old, mi, a, b in zip(weights(solver), theta, m, z1, z2):
            v = beta2 * a**2 + (1 - beta2) * b**2
            denom = torch.sqrt(v + sigma) if denominator == "sqrt_v" else torch.sqrt(v**2 + sigma)
            torch.testing.assert_close(p_new, p_old - lr * g * mi / denom, rtol=1e-4, atol=1e-6)
        momentum = m
    return momentum


ADAMU = dict(T1=1, T2=4, T3=6, alpha_target=0.3, beta1_target=0.5, beta2_target=0.2, eps=0.1, lr=1e-2)


@pytest.mark.parametrize("gaussian_param,denominator", [("std", "sqrt_v"), ("variance", "v"), ("std", "v")])
def test_zo_adamu_follows_the_momentum_perturbation_rule(gaussian_param, denominator):
    solver, objective = make(ZOAdaMU, params=params_6x5_and_4(), gaussian_param=gaussian_param,
                             denominator=denominator, **ADAMU)
    targets = {k: ADAMU[f"{k}_target"] for k in ("alpha", "beta1", "beta2")}
    momentum = adamu_reference(solver, objective, 7, solver.adamu.noise, (1, 4, 6), targets, 0.1, 1e-2,
                               gaussian_param, denominator)
    for mine, want in zip(solver.adamu.momentum, momentum):
        torch.testing.assert_close(mine.double(), want, rtol=1e-5, atol=1e-6)


def test_zo_adamu_schedule_phases_and_fractions():
    solver = ZOAdaMU(steps=100, T1=0.1, T2=0.5, T3=0.9, alpha_target=0.2, beta1_target=0.0,
                     beta2_target=1.0)
    c = [solver.coefficients(t) for t in range(100)]
    assert all(x["alpha"] == 1.0 for x in c[:10])                              # exploration: 1 before T1
    assert c[10]["alpha"] == pytest.approx(1.0)                                # the cosine starts at 1
    assert c[30]["alpha"] == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)
    assert c[50]["alpha"] == pytest.approx(0.2 + 0.8 * 0.5)                     # T2 = the cosine's midpoint here
    assert all(x == c[50] for x in c[50:])                                     # frozen from T2
    assert c[50]["beta1"] == pytest.approx((1 + math.cos(math.pi * 40 / 80)) / 2)
    assert all(x["beta2"] == 1.0 for x in c)                                   # target 1: no annealing
    assert all(c[t]["alpha"] >= c[t + 1]["alpha"] for t in range(99))


def test_subzero_adamu_draws_in_the_subspace_and_keeps_momentum_across_renewals():
    params = params_6x5_and_4()
    solver, objective = make(SubZeroAdaMU, params=params, rank=2, update_interval=3, **ADAMU)
    targets = {k: ADAMU[f"{k}_target"] for k in ("alpha", "beta1", "beta2")}
    spans = []

    def check_subspace(t):  # the fresh draws of step t are U S V^T in the step's subspace
        solver.low_rank.use_subspace(t // 3)
        u, v = solver.low_rank.bases[0]
        spans.append(u.clone())
        z = solver.low_rank.direction(solver.direction_seed(t, 0), 0)
        torch.testing.assert_close(u @ u.T @ z @ v @ v.T, z, atol=1e-5, rtol=0)

    adamu_reference(solver, objective, 7, solver.low_rank, (1, 4, 6), targets, 0.1, 1e-2, "std", "sqrt_v",
                    before_step=check_subspace)
    assert torch.equal(spans[0], spans[2]) and not torch.equal(spans[2], spans[3])
    assert solver.adamu.momentum[0].abs().sum() > 0


# ---- replay and resume -------------------------------------------------------------------
CASES = [(ZOMuon, dict(rank=2, update_interval=2, n_perts=3, lr=0.05)),
         (ZOMuon, dict(rank=2, n_perts=2, perturbation="two_side", weight_decay=0.1, lr=0.05, exact=False)),
         (ZOAdaMU, dict(ADAMU, weight_decay=0.1)),
         (SubZeroAdaMU, dict(ADAMU, rank=2, update_interval=2))]


@pytest.mark.parametrize("cls,kw", CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_replay_rebuilds_weights_and_state_bit_exactly(cls, kw):
    solver, _ = make(cls, params=params_6x5_and_4(), **kw)
    start = [p.detach().clone() for p in solver.params]
    records = [json.loads(json.dumps(solver.step([None], s).record)) for s in range(6)]  # via JSON, as on disk
    trained = [p.detach().clone() for p in solver.params]
    fresh, _ = make(cls, params=[torch.nn.Parameter(s.clone()) for s in start], **kw)
    for r in records:
        fresh.replay(r)
    if kw.get("exact", True):  # virtual perturbation: the update is the only write, as in the replay
        assert all(torch.equal(a.detach(), b) for a, b in zip(fresh.params, trained))
    else:                      # in-place perturb / restore: float drift only
        for a, b in zip(fresh.params, trained):
            torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-5)
    assert not torch.equal(trained[0], start[0])
    if cls is not ZOMuon:
        assert all(torch.equal(a, b) for a, b in zip(fresh.adamu.momentum, solver.adamu.momentum))


@pytest.mark.parametrize("cls", [ZOAdaMU, SubZeroAdaMU])
def test_adamu_resumes_from_its_state_dict(cls):
    kw = dict(ADAMU, rank=2) if cls is SubZeroAdaMU else ADAMU
    solver, _ = make(cls, params=params_6x5_and_4(), **kw)
    for s in range(3):
        solver.step([None], s)
    saved = ([p.detach().clone() for p in solver.params], solver.state_dict())
    for s in range(3, 6):
        solver.step([None], s)
    resumed, _ = make(cls, params=[torch.nn.Parameter(p.clone()) for p in saved[0]], **kw)
    resumed.load_state_dict(saved[1])
    for s in range(3, 6):
        resumed.step([None], s)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(resumed.params, solver.params))


# ---- bad knobs (no model) -----------------------------------------------------------------
BAD = [
    (ZOMuon, {"perturbation": "both"}, "solver.perturbation"), (ZOMuon, {"ns_steps": 0}, "solver.ns_steps"),
    (ZOMuon, {"vector_lr": -1.0}, "solver.vector_lr"), (ZOMuon, {"vector_lr": float("nan")}, "solver.vector_lr"),
    (ZOMuon, {"rank": 0}, "solver.rank"), (ZOMuon, {"rank": 16, "lora_rank": 8}, "solver.rank"),
    (ZOMuon, {"update_interval": 0}, "solver.update_interval"), (ZOMuon, {"n_perts": 0}, "solver.n_perts"),
    (ZOMuon, {"lr": float("inf")}, "solver.lr"), (ZOMuon, {"eps": float("inf")}, "solver.eps"),
    (ZOAdaMU, {"n_perts": 2}, "solver.n_perts"), (ZOAdaMU, {"T1": 1.5}, "solver.T1"),
    (ZOAdaMU, {"T1": -1}, "solver.T1"), (ZOAdaMU, {"T1": 5, "T2": 3}, "solver.T2"),
    (ZOAdaMU, {"T2": 0.9, "T3": 0.5}, "solver.T2"), (ZOAdaMU, {"alpha_target": 1.5}, "solver.alpha_target"),
    (ZOAdaMU, {"beta1_target": float("nan")}, "solver.beta1_target"), (ZOAdaMU, {"beta2_target": -0.1}, "solver.beta2_target"),
    (ZOAdaMU, {"sigma": float("inf")}, "solver.sigma"), (ZOAdaMU, {"gaussian_param": "var"}, "solver.gaussian_param"),
    (ZOAdaMU, {"denominator": "v2"}, "solver.denominator"), (ZOAdaMU, {"lr": float("inf")}, "solver.lr"),
    (SubZeroAdaMU, {"rank": 0}, "solver.rank"), (SubZeroAdaMU, {"rank": 9, "lora_rank": 8}, "solver.rank"),
    (SubZeroAdaMU, {"update_interval": 0}, "solver.update_interval"),
]


@pytest.mark.parametrize("cls,kw,field", BAD, ids=[f"{c.__name__}-{f}-{list(k.values())[0]}" for c, k, f in BAD])
def test_bad_hyperparameters_raise_one_line_config_errors(cls, kw, field):
    with pytest.raises(ConfigError) as err:
        cls(steps=10, **kw)
    assert err.value.field == field and "\n" not in str(err.value)


# ---- a real run replays through `python -m zoexp.replay` ------------------------------------
@pytest.mark.slow  # three short LoRA runs of the default model
@pytest.mark.parametrize("solver", ["zo_muon", "zo_adamu", "subzero_adamu"])
def test_cli_run_replays_to_its_checkpoint_bit_exactly(tmp_path, sst2_dir, solver, capsys):
    from tests.conftest import run_main
    from zoexp import replay as R

    run_dir = tmp_path / "run"
    proc = run_main("hardware=cpu", "peft=lora", f"solver={solver}", f"task.data_dir={sst2_dir}", "solver.steps=4",
                    "solver.batch_size=2", "solver.eval_every=0", "solver.n_perts=2" if solver == "zo_muon" else
                    "solver.lr=1e-2", "task.num_train=4", "task.num_dev=4", "task.num_eval=4", "checkpoint_every=3",
                    f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert R.main([str(run_dir), "--verify"]) == 0
    assert "replay to step 3 vs checkpoint.pt: bit-identical" in capsys.readouterr().out
    assert not all(torch.equal(a, b) for a, b in zip(R.replay(run_dir, 0).params, R.replay(run_dir, 3).params))
