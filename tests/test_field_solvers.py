"""The field's other ZO methods (ZO-SGD-Sign, ZO-SGD-Cons, HiZOO, LOZO, LOZO-M, Sparse-MeZO)
and one-sided probes, against their published update rules written out here, on the
closed-form quadratic of `tests.test_solvers` (f(theta) = 1/2 theta^T A theta, so every loss
the solver sees has a closed form); plus bit-exact replay, resumable state and one-line
errors for bad hyperparameters."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import assert_fails_early
from tests.test_solvers import DIM, flat_params, make
from zoexp.distributed import Ranks, close, init_ranks
from zoexp.errors import ConfigError
from zoexp.solvers.hizoo import HiZOO
from zoexp.solvers.lozo import LOZO, LazyLowRankDirections
from zoexp.solvers.lozo_m import LOZOM
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.sparse_mezo import SparseMeZO
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.spsa15 import SPSA15
from zoexp.solvers.subzero import SubZero
from zoexp.solvers.zo_adam import ZOAdam
from zoexp.solvers.zo_cons import ZOCons, conservative_move
from zoexp.solvers.zo_sgd_momentum import ZOSGDMomentum
from zoexp.solvers.zo_sign import ZOSign


def f(A: torch.Tensor, t: torch.Tensor) -> float:
    return float(0.5 * t @ A @ t)


def flat_direction(solver, seed: int) -> torch.Tensor:
    """z(seed) over all parameters, flattened, float64 (what the solver perturbs along now)."""
    return torch.cat([solver.directions.direction(seed, i).double().reshape(-1)
                      for i in range(len(solver.params))])


def central(A, theta, z, eps) -> float:
    return (f(A, theta + eps * z) - f(A, theta - eps * z)) / (2 * eps)


def matrix_and_vector(seed: int = 1) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(6, 5, generator=gen) * 0.5),
            torch.nn.Parameter(torch.randn(4, generator=gen) * 0.5)]


# ---- one-sided probes (solver.perturbation=one_side) ---------------------------------------
def test_one_side_is_the_forward_difference_with_f0_shared_by_the_directions():
    eps, lr, n = 0.1, 0.05, 3
    solver, objective = make(SPSA, n_perts=n, eps=eps, lr=lr, perturbation="one_side")
    A, theta = objective.A, flat_params(solver)
    one_sided, two_sided = theta.clone(), theta.clone()
    for k in range(n):
        z = flat_direction(solver, solver.direction_seed(0, k))
        one_sided -= lr / n * (f(A, theta + eps * z) - f(A, theta)) / eps * z
        two_sided -= lr / n * central(A, theta, z, eps) * z
    result = solver.step([None], 0)
    assert objective.scorer.forward_passes == 1 + n  # f(theta) once, then one probe a direction
    assert result.loss == pytest.approx(f(A, theta), rel=1e-6)
    torch.testing.assert_close(flat_params(solver), one_sided, rtol=1e-4, atol=1e-6)
    assert (flat_params(solver) - two_sided).abs().max() > 1e-3  # eps z^T A z / 2 tells them apart


def test_mezo_one_side_uses_f_theta_in_place_of_the_minus_probe():
    eps, lr = 0.1, 0.05
    solver, objective = make(MeZO, eps=eps, lr=lr, perturbation="one_side")
    A, theta = objective.A, flat_params(solver)
    z = solver.engine.direction(solver.direction_seed(0), 0).double()
    expected = theta - lr * (f(A, theta + eps * z) - f(A, theta)) / eps * z
    result = solver.step([None], 0)
    assert objective.scorer.forward_passes == 2
    assert result.loss == pytest.approx(f(A, theta), rel=1e-6)
    torch.testing.assert_close(flat_params(solver), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [SPSA15, HiZOO])
def test_solvers_that_need_f_minus_refuse_one_side(cls):
    with pytest.raises(ConfigError) as err:
        cls(steps=1, perturbation="one_side")
    assert err.value.field == "solver.perturbation" and "two_side" in str(err.value)


@pytest.mark.parametrize("name", ["mezo", "spsa", "spsa15", "subzero", "zo_adam", "zo_sgd_momentum",
                                  "zo_sign", "zo_cons", "hizoo", "lozo", "lozo_m", "sparse_mezo"])
def test_every_seeded_zo_yaml_takes_the_perturbation_option(name):
    import hydra
    from hydra import compose, initialize_config_dir

    from tests.conftest import ROOT

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"solver={name}", "solver.perturbation=one_side"])
    assert cfg.solver.perturbation == "one_side"
    if name in ("spsa15", "hizoo"):
        with pytest.raises(Exception, match="solver.perturbation"):
            hydra.utils.instantiate(cfg.solver)
    else:
        assert hydra.utils.instantiate(cfg.solver).perturbation == "one_side"


# ---- ZO-SGD-Sign ---------------------------------------------------------------------------
@pytest.mark.parametrize("sign_of", ["estimate", "projected_grad"])
def test_zo_sign_steps_along_the_sign(sign_of):
    eps, lr, n = 1e-2, 1e-2, 3
    solver, objective = make(ZOSign, n_perts=n, eps=eps, lr=lr, sign_of=sign_of)
    A, theta = objective.A, flat_params(solver)
    zs = [flat_direction(solver, solver.direction_seed(0, k)) for k in range(n)]
    gs = [central(A, theta, z, eps) for z in zs]
    if sign_of == "estimate":  # ZO-signSGD: every coordinate moves by exactly lr
        expected = theta - lr * torch.sign(sum(g * z for g, z in zip(gs, zs)) / n)
    else:                      # the benchmark's code: sign of each projected gradient, times z
        expected = theta - lr / n * sum(math.copysign(1.0, g) * z for g, z in zip(gs, zs))
    solver.step([None], 0)
    assert objective.scorer.forward_passes == 2 * n
    torch.testing.assert_close(flat_params(solver), expected, rtol=1e-5, atol=1e-6)


# ---- ZO-SGD-Cons ---------------------------------------------------------------------------
def lowest_with_preferences(loss_zero, loss_down, loss_up) -> int:
    """The lowest loss wins; among equal losses theta + lr g z, then theta - lr g z, then theta."""
    ranked = [(loss_up, 1), (loss_down, -1), (loss_zero, 0)]
    best = min(loss for loss, _ in ranked)
    return next(move for loss, move in ranked if loss == best)


def test_conservative_choice_is_the_lowest_loss_with_the_benchmarks_tie_breaks():
    for triple in itertools.product([0.0, 1.0, 2.0], repeat=3):
        assert conservative_move(*triple) == lowest_with_preferences(*triple), triple


@pytest.mark.parametrize("perturbation,per_step", [("two_side", 5), ("one_side", 4)])
def test_zo_cons_applies_the_best_of_three_candidates(perturbation, per_step):
    eps, moves = 0.3, set()
    for lr in (0.02, 0.5):  # small: theta - lr g z helps; large: it overshoots and theta is kept
        solver, objective = make(ZOCons, eps=eps, lr=lr, perturbation=perturbation)
        A = objective.A
        for step in range(4):
            theta = flat_params(solver)
            z = flat_direction(solver, solver.direction_seed(step, 0))
            g = (central(A, theta, z, eps) if perturbation == "two_side"
                 else (f(A, theta + eps * z) - f(A, theta)) / eps)
            candidates = {-1: theta - lr * g * z, 0: theta, 1: theta + lr * g * z}
            move = lowest_with_preferences(*(f(A, candidates[m]) for m in (0, -1, 1)))
            before = objective.scorer.forward_passes
            result = solver.step([None], step)
            assert objective.scorer.forward_passes - before == per_step
            assert result.record["move"] == move
            torch.testing.assert_close(flat_params(solver), candidates[move], rtol=1e-5, atol=1e-6)
            if move == 0:  # a rejected step writes nothing: the weights are bit-identical
                assert torch.equal(flat_params(solver), theta)
            moves.add(move)
    assert {-1, 0} <= moves


# ---- HiZOO ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2])
def test_hizoo_follows_the_hessian_informed_rule(n):
    """Sigma^-1 = diag(h), h_0 = 1; probes along u / sqrt(h_{t-1}); h_t = (1 - a) h_{t-1}
    + a mean_k |f+ + f- - 2 f0| / (2 mu^2) h_{t-1} u_k^2; theta -= lr mean_k g_k u_k / sqrt(h_t)."""
    mu, lr, alpha = 0.1, 0.05, 0.5
    solver, objective = make(HiZOO, eps=mu, lr=lr, hessian_smooth=alpha, n_perts=n)
    A, h = objective.A, torch.ones(DIM, dtype=torch.float64)
    for step in range(3):
        theta = flat_params(solver)
        us = [solver.scaled.raw(solver.direction_seed(step, k), 0).double() for k in range(n)]
        f0 = f(A, theta)
        pm = [(f(A, theta + mu * u / h.sqrt()), f(A, theta - mu * u / h.sqrt())) for u in us]
        curv = [abs(fp + fm - 2 * f0) / (2 * mu**2) for fp, fm in pm]
        # on a quadratic, c = 1/2 (Sigma^1/2 u)^T A (Sigma^1/2 u)
        assert curv[0] == pytest.approx(0.5 * float((us[0] / h.sqrt()) @ A @ (us[0] / h.sqrt())), rel=1e-3)
        h_new = (1 - alpha) * h + alpha * sum(c * h * u**2 for c, u in zip(curv, us)) / n
        expected = theta - lr / n * sum((fp - fm) / (2 * mu) * u / h_new.sqrt()
                                        for (fp, fm), u in zip(pm, us))
        before = objective.scorer.forward_passes
        result = solver.step([None], step)
        assert objective.scorer.forward_passes - before == 2 * n + 1
        assert result.metrics["curvature"] == pytest.approx(sum(curv) / n, rel=1e-3)
        torch.testing.assert_close(solver.scaled.hessian[0].double(), h_new, rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(flat_params(solver), expected, rtol=1e-3, atol=1e-6)
        h = solver.scaled.hessian[0].double()
    assert not torch.allclose(h, torch.ones(DIM, dtype=torch.float64))  # the estimate did move


def test_hizoo_without_smoothing_is_mezo_plus_one_forward():
    mu, lr = 0.1, 0.05
    solver, objective = make(HiZOO, eps=mu, lr=lr, hessian_smooth=0.0)
    A, theta = objective.A, flat_params(solver)
    u = solver.scaled.raw(solver.direction_seed(0), 0).double()
    solver.step([None], 0)
    torch.testing.assert_close(flat_params(solver), theta - lr * central(A, theta, u, mu) * u,
                               rtol=1e-4, atol=1e-6)
    assert torch.equal(solver.scaled.hessian[0], torch.ones(DIM))


# ---- LOZO ----------------------------------------------------------------------------------
def test_lozo_direction_is_u_v_transpose_with_v_kept_for_nu_steps():
    solver, _ = make(LOZO, params=matrix_and_vector(), rank=2, update_interval=3, lr=1e-2)
    lazy, vs = solver.low_rank, []
    for step in range(7):
        lazy.use_subspace(solver.subspace_index(step))
        v = lazy.bases[0]
        vs.append(v.clone())
        projector = v @ torch.linalg.inv(v.T @ v) @ v.T
        zs = [lazy.direction(solver.direction_seed(step, k), 0) for k in range(2)]
        for k, z in enumerate(zs):
            assert z.shape == (6, 5) and torch.linalg.matrix_rank(z).item() == 2
            torch.testing.assert_close(z @ projector, z, atol=1e-5, rtol=0)  # rows in span(V)
            u = lazy.left_factor(solver.direction_seed(step, k), 0)
            torch.testing.assert_close(z, u @ v.T)
        assert not torch.allclose(zs[0], zs[1])  # U is redrawn for every direction
        assert lazy.direction(solver.direction_seed(step, 0), 1).shape == (4,)  # vectors: Gaussian
    for step in range(1, 7):
        assert torch.equal(vs[step], vs[step - 1]) == (step % 3 != 0), step


def test_lozo_factors_are_standard_gaussian_not_orthonormal():
    lazy = LazyLowRankDirections([torch.zeros(300, 200)], rank=8, seed=0)
    lazy.use_subspace(0)
    v, u = lazy.bases[0], lazy.left_factor(123, 0)
    for factor in (u, v):
        assert abs(factor.mean().item()) < 0.05 and factor.var().item() == pytest.approx(1.0, abs=0.1)


def test_lozo_update_is_the_low_rank_gradient_estimator_step():
    eps, lr, n = 0.1, 0.02, 2
    solver, objective = make(LOZO, params=matrix_and_vector(), rank=2, update_interval=2, n_perts=n,
                             eps=eps, lr=lr)
    A = objective.A
    for step in range(4):
        solver.low_rank.use_subspace(solver.subspace_index(step))
        theta = flat_params(solver)
        zs = [flat_direction(solver, solver.direction_seed(step, k)) for k in range(n)]
        expected = theta - lr / n * sum(central(A, theta, z, eps) * z for z in zs)
        solver.step([None], step)
        torch.testing.assert_close(flat_params(solver), expected, rtol=1e-4, atol=1e-6)


def test_lozo_m_keeps_low_rank_momentum_and_projects_it_onto_the_new_v():
    """N_0 = c U; on a new window N <- N V_old^T V_new / n_cols; N <- b N + (1 - b) c U;
    W <- W - lr N V^T. The vector parameter: m <- b m + (1 - b) c z (m_0 = c z)."""
    eps, lr, beta = 0.1, 0.05, 0.5
    solver, objective = make(LOZOM, params=matrix_and_vector(), rank=2, update_interval=2,
                             momentum=beta, eps=eps, lr=lr)
    A, lazy = objective.A, solver.low_rank
    N = m = None
    for step in range(5):
        window = solver.subspace_index(step)
        lazy.use_subspace(window)
        seed = solver.direction_seed(step, 0)
        theta = flat_params(solver)
        c = central(A, theta, flat_direction(solver, seed), eps)
        u, v = lazy.left_factor(seed, 0).double(), lazy.right_factor(window, 0).double()
        z_vec = lazy.direction(seed, 1).double()
        if N is None:
            N, m = c * u, c * z_vec
        else:
            if window != solver.subspace_index(step - 1):
                v_old = lazy.right_factor(window - 1, 0).double()
                N = N @ v_old.T @ v / v.shape[0]
            N, m = beta * N + (1 - beta) * c * u, beta * m + (1 - beta) * c * z_vec
        expected = theta - lr * torch.cat([(N @ v.T).reshape(-1), m])
        solver.step([None], step)
        torch.testing.assert_close(flat_params(solver), expected, rtol=1e-4, atol=1e-6)
        assert solver.buffers[0].shape == (6, 2)  # m x r, not m x n
    assert solver.window == 2


# ---- Sparse-MeZO ---------------------------------------------------------------------------
def test_sparse_mezo_threshold_keeps_the_smallest_share_of_each_tensor():
    values = torch.arange(1, 101, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(50)
    params = [torch.nn.Parameter(values[torch.randperm(100, generator=torch.Generator().manual_seed(0))]),
              torch.nn.Parameter(torch.linspace(-3, 3, 40).reshape(8, 5))]
    solver, _ = make(SparseMeZO, params=params, sparsity=0.75)
    masked = solver.masked
    assert masked.thresholds[0] == 25.0  # |theta| <= 25: the 25 smallest of 100
    for i, p in enumerate(params):
        m = masked.mask(i)
        k = round(0.25 * p.numel())
        assert m.sum().item() >= k
        assert p.detach().abs()[m].max() <= p.detach().abs()[~m].min()  # small ones in, large out


@pytest.mark.parametrize("threshold", ["initial", "current"])
def test_sparse_mezo_perturbs_and_updates_only_the_masked_weights(threshold):
    eps, lr, sparsity = 0.1, 0.3, 0.5
    start = torch.linspace(-1, 1, DIM)
    solver, objective = make(SparseMeZO, params=[torch.nn.Parameter(start.clone())], eps=eps, lr=lr,
                             sparsity=sparsity, threshold=threshold)
    A = objective.A
    h0 = start.abs().sort().values[DIM // 2 - 1].item()  # the 4th smallest of 8
    for step in range(3):
        theta = flat_params(solver)
        h = h0 if threshold == "initial" else theta.abs().sort().values[DIM // 2 - 1].item()
        mask = (theta.abs() <= h).double()
        z = solver.masked.engine.direction(solver.direction_seed(step, 0), 0).double() * mask
        expected = theta - lr * central(A, theta, z, eps) * z
        solver.step([None], step)
        torch.testing.assert_close(flat_params(solver), expected, rtol=1e-4, atol=1e-6)
        frozen = mask == 0
        assert torch.equal(flat_params(solver)[frozen], theta[frozen])  # bit for bit
        assert solver.masked.thresholds[0] == pytest.approx(h, abs=1e-7)


def test_sparse_mezo_initial_threshold_of_a_zero_tensor_allows_one_step():
    """LoRA's B starts at zero: threshold 0, every entry moves once, then none is <= 0."""
    params = [torch.nn.Parameter(torch.linspace(-1, 1, 4)), torch.nn.Parameter(torch.zeros(4))]
    solver, _ = make(SparseMeZO, params=params, lr=0.1, eps=0.1)
    assert solver.masked.thresholds[1] == 0.0
    solver.step([None], 0)
    once = params[1].detach().clone()
    assert (once != 0).all()
    solver.step([None], 1)
    assert torch.equal(params[1].detach(), once)


# ---- replay, state, distribution ---------------------------------------------------------------
REPLAYED = [
    (ZOSign, {"n_perts": 2}), (ZOSign, {"sign_of": "projected_grad", "n_perts": 2, "weight_decay": 0.1}),
    (ZOCons, {"lr": 0.3}), (ZOCons, {"perturbation": "one_side"}),
    (HiZOO, {"hessian_smooth": 0.5, "n_perts": 2, "weight_decay": 0.1}),
    (LOZO, {"rank": 2, "update_interval": 2}),
    (LOZOM, {"rank": 2, "update_interval": 2, "n_perts": 2, "perturbation": "one_side"}),
    (SparseMeZO, {"n_perts": 2, "weight_decay": 0.1}), (SparseMeZO, {"threshold": "current"}),
    (SPSA, {"n_perts": 3, "perturbation": "one_side"}), (ZOAdam, {"perturbation": "one_side"}),
    (ZOSGDMomentum, {"perturbation": "one_side"}), (MeZO, {"perturbation": "one_side"}),
    (SubZero, {"rank": 2, "perturbation": "one_side"}),
]


def fresh_copy(cls, kw, start):
    return make(cls, params=[torch.nn.Parameter(s.clone()) for s in start], **{"lr": 1e-2, "eps": 0.05, **kw})


def start_params(cls):
    return [p.detach().clone() for p in (matrix_and_vector() if cls in (LOZO, LOZOM, SubZero) else
                                          [torch.nn.Parameter(torch.linspace(-1, 1, DIM))])]


def case_id(value) -> str:
    return getattr(value, "__name__", None) or "-".join(map(str, value.values()))


@pytest.mark.parametrize("cls,kw", REPLAYED, ids=case_id)
def test_replay_from_the_records_is_bit_exact(cls, kw):
    start = start_params(cls)
    solver, _ = fresh_copy(cls, kw, start)
    records = [json.loads(json.dumps(solver.step([None], s).record)) for s in range(5)]  # as on disk
    trained = [p.detach().clone() for p in solver.params]
    assert not torch.equal(trained[0], start[0])
    replayer, _ = fresh_copy(cls, kw, start)
    with torch.no_grad():
        for r in records:
            replayer.replay(r)
    assert all(torch.equal(a.detach(), b) for a, b in zip(replayer.params, trained))
    if cls is HiZOO:  # the Hessian estimate is rebuilt too
        assert all(torch.equal(a, b) for a, b in zip(replayer.scaled.hessian, solver.scaled.hessian))


@pytest.mark.parametrize("cls,kw", [(HiZOO, {"hessian_smooth": 0.5}),
                                    (LOZOM, {"rank": 2, "update_interval": 2}), (SparseMeZO, {})])
def test_state_dict_resumes_a_run_bit_exactly(cls, kw):
    start = start_params(cls)
    straight, _ = fresh_copy(cls, kw, start)
    for s in range(5):
        straight.step([None], s)
    first, _ = fresh_copy(cls, kw, start)
    for s in range(3):
        first.step([None], s)
    state = first.state_dict()
    resumed, _ = fresh_copy(cls, kw, [p.detach().clone() for p in first.params])
    resumed.load_state_dict(state)
    for s in range(3, 5):
        resumed.step([None], s)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(resumed.params, straight.params))


DISTRIBUTED = {"hizoo": (HiZOO, {"hessian_smooth": 0.5}),
               "lozo_m": (LOZOM, {"rank": 2, "update_interval": 2}),
               "sparse_mezo": (SparseMeZO, {"threshold": "current"}), "zo_sign": (ZOSign, {}),
               "spsa_one_side": (SPSA, {"perturbation": "one_side"}), "lozo": (LOZO, {"rank": 2})}


def train_all(ranks: Ranks) -> dict:
    out = {}
    for name, (cls, kw) in DISTRIBUTED.items():
        solver, objective = fresh_copy(cls, {"n_perts": 3, **kw}, start_params(cls))
        solver.distribute(ranks)
        losses = [solver.step([None], t).loss for t in range(3)]
        out[name] = {"params": [p.detach().clone() for p in solver.params], "losses": losses,
                     "forward_passes": objective.scorer.forward_passes}
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    ranks, _ = init_ranks(torch.device("cpu"))
    torch.save(train_all(ranks), os.path.join(out_dir, f"{rank}.pt"))
    close(ranks)


def test_two_processes_take_the_one_process_steps(tmp_path):
    from tests.test_distributed import free_port

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    alone = train_all(Ranks())
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for name in DISTRIBUTED:
        for got in ranks:
            assert all(torch.equal(a, b) for a, b in zip(got[name]["params"], alone[name]["params"])), name
            assert got[name]["losses"] == alone[name]["losses"], name
        base = 1 if name in ("hizoo", "spsa_one_side") else 0  # f(theta), on every rank
        per_direction = 1 if name == "spsa_one_side" else 2
        assert [r[name]["forward_passes"] for r in ranks] == [3 * (base + per_direction * 2),
                                                              3 * (base + per_direction)], name


def test_zo_cons_runs_in_one_process_only():
    solver = ZOCons(steps=1)
    with pytest.raises(ConfigError) as err:
        solver.distribute(Ranks(rank=0, world=2))
    assert err.value.field == "processes"


# ---- hyperparameter validation ---------------------------------------------------------------
BAD = [
    (ZOSign, {"sign_of": "magnitude"}, "solver.sign_of"),
    (ZOSign, {"weight_decay": float("inf")}, "solver.weight_decay"),
    (ZOCons, {"n_perts": 2}, "solver.n_perts"),
    (ZOCons, {"weight_decay": 0.1}, "solver.weight_decay"),
    (HiZOO, {"hessian_smooth": 1.0}, "solver.hessian_smooth"),
    (HiZOO, {"hessian_smooth": float("nan")}, "solver.hessian_smooth"),
    (HiZOO, {"dist": "uniform"}, "solver.dist"),
    (SPSA, {"perturbation": "both"}, "solver.perturbation"),
    (MeZO, {"perturbation": "one-side"}, "solver.perturbation"),
    (LOZO, {"rank": 0}, "solver.rank"),
    (LOZO, {"update_interval": 0}, "solver.update_interval"),
    (LOZO, {"rank": 16, "lora_rank": 8}, "solver.rank"),
    (LOZOM, {"momentum": 1.0}, "solver.momentum"),
    (LOZOM, {"momentum": float("inf")}, "solver.momentum"),
    (SparseMeZO, {"sparsity": 1.0}, "solver.sparsity"),
    (SparseMeZO, {"sparsity": -0.1}, "solver.sparsity"),
    (SparseMeZO, {"threshold": "global"}, "solver.threshold"),
    (SparseMeZO, {"exact": False}, "solver.exact"),
    (SPSA, {"eps": float("inf")}, "solver.eps"),
    (MeZO, {"lr": float("nan")}, "solver.lr"),
]


@pytest.mark.parametrize("cls,kw,field", BAD, ids=[f"{c.__name__}-{f}" for c, _, f in BAD])
def test_bad_hyperparameters_raise_one_line_config_errors(cls, kw, field):
    with pytest.raises(ConfigError) as err:
        cls(steps=1, **kw)
    assert err.value.field == field and "\n" not in str(err.value) and "allowed:" in str(err.value)


CLI = [
    (["solver=zo_cons", "solver.n_perts=2"], "solver.n_perts: got 2", "1 ("),
    (["solver=hizoo", "solver.perturbation=one_side"], "solver.perturbation: got 'one_side'", "two_side"),
    (["solver=spsa15", "solver.perturbation=one_side"], "solver.perturbation: got 'one_side'", "two_side"),
    (["solver=sparse_mezo", "solver.exact=false"], "solver.exact: got False", "true"),
    (["solver=lozo_m", "solver.rank=16"], "solver.rank: got 16", "1..8"),
]


@pytest.mark.parametrize("overrides,expected,allowed", CLI, ids=[" ".join(c[0]) for c in CLI])
def test_bad_overrides_fail_with_one_line_before_the_model_loads(tmp_path, overrides, expected, allowed):
    assert_fails_early(tmp_path, overrides, expected, allowed)


# ---- end to end: `python -m zoexp.replay --verify` on real runs ------------------------------
REPLAY_RUNS = {
    "hizoo": ["solver=hizoo", "solver.hessian_smooth=0.5"],           # the Hessian diagonal is state
    "lozo_m": ["solver=lozo_m", "solver.update_interval=2", "solver.perturbation=one_side"],
    "sparse_mezo": ["solver=sparse_mezo", "solver.threshold=current"],
    "zo_cons": ["solver=zo_cons", "solver.lr=0.5"],                  # some candidates rejected
}


@pytest.mark.slow  # one short LoRA run of the default model each (~1 min on 2 CPU cores)
@pytest.mark.parametrize("name", list(REPLAY_RUNS))
def test_cli_replay_redoes_a_real_run_bit_exactly(name, tmp_path, sst2_dir, capsys):
    from tests.conftest import run_main
    from zoexp import replay as R

    run_dir = tmp_path / "run"
    proc = run_main("hardware=cpu", "peft=lora", f"task.data_dir={sst2_dir}", "solver.steps=5",
                    "solver.batch_size=2", "solver.eval_every=0", "task.num_train=4", "task.num_dev=4",
                    "task.num_eval=4", "checkpoint_every=4", f"hydra.run.dir={run_dir}", *REPLAY_RUNS[name])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert R.main([str(run_dir), "--verify"]) == 0
    assert "replay to step 4 vs checkpoint.pt: bit-identical" in capsys.readouterr().out
    untrained = R.replay(run_dir, 0)
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert not all(torch.equal(a, b) for a, b in zip(untrained.params, ckpt["params"]))
