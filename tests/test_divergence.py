"""Divergence is caught at the step it happens, before the update reaches the weights (issue 15,
item 2): every solver refuses a non-finite loss / projected gradient, the loop stops with
`diverged: true` and no test score (on_divergence=stop) or skips and counts the step
(skip_step), non-finite hyperparameters never start a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import assert_fails_early, run_main
from tests.fakes import QuadraticObjective, make_loop
from zoexp import errors  # (errors.Diverged: looked up in the tests, so this file imports on older code)
from zoexp.solvers.fo_adam import FOAdam
from zoexp.solvers.fo_sgd import FOSGD
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.spsa15 import SPSA15
from zoexp.solvers.subzero import SubZero
from zoexp.solvers.zo_adam import ZOAdam
from zoexp.solvers.zo_sgd_momentum import ZOSGDMomentum

COMMON = {"steps": 8, "batch_size": 2, "eval_every": 4, "lr": 0.05}
SOLVERS = {
    "mezo": lambda: MeZO(eps=1e-2, **COMMON),
    "mezo_in_place": lambda: MeZO(eps=1e-2, exact=False, **COMMON),
    "spsa": lambda: SPSA(eps=1e-2, n_perts=2, **COMMON),
    "spsa15": lambda: SPSA15(eps=1e-2, n_perts=2, **COMMON),
    "subzero": lambda: SubZero(eps=1e-2, n_perts=2, rank=1, **COMMON),
    "zo_adam": lambda: ZOAdam(eps=1e-2, n_perts=2, **COMMON),
    "zo_sgd_momentum": lambda: ZOSGDMomentum(eps=1e-2, n_perts=2, **COMMON),
    "fo_sgd": lambda: FOSGD(**COMMON),
    "fo_adam": lambda: FOAdam(**COMMON),
    "mezo_one_side": lambda: MeZO(eps=1e-2, perturbation="one_side", **COMMON),
    "zo_sign": lambda: _solver("zo_sign", "ZOSign", eps=1e-2, n_perts=2),
    "zo_cons": lambda: _solver("zo_cons", "ZOCons", eps=1e-2),
    "hizoo": lambda: _solver("hizoo", "HiZOO", eps=1e-2, n_perts=2),
    "lozo": lambda: _solver("lozo", "LOZO", eps=1e-2, n_perts=2, rank=1),
    "lozo_m": lambda: _solver("lozo_m", "LOZOM", eps=1e-2, n_perts=2, rank=1),
    "sparse_mezo": lambda: _solver("sparse_mezo", "SparseMeZO", eps=1e-2, n_perts=2, sparsity=0.5),
    "zo_muon": lambda: _solver("zo_muon", "ZOMuon", eps=1e-2, n_perts=2, rank=1),
    "zo_adamu": lambda: _solver("zo_adamu", "ZOAdaMU", eps=1e-2),
    "subzero_adamu": lambda: _solver("subzero_adamu", "SubZeroAdaMU", eps=1e-2, rank=1),
}


def _solver(module: str, name: str, **kwargs):
    """Solvers added by others since: built by name, so this file needs no edit when they move."""
    import importlib

    return getattr(importlib.import_module(f"zoexp.solvers.{module}"), name)(**kwargs, **COMMON)


def fresh() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(48)), torch.nn.Parameter(torch.zeros(6, 4))]


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_refuses_a_nan_step_before_applying_it(name):
    solver, params = SOLVERS[name](), fresh()
    objective = QuadraticObjective(params)
    solver.setup(params, objective, [])
    solver.step([], 0)  # a healthy step first: moments, momentum and carried perturbations exist
    solver.settle()
    before = [p.detach().clone() for p in params]
    objective.nan_at = {objective.scorer.forward_passes}  # the next forward pass returns nan
    with pytest.raises(errors.Diverged) as caught:
        solver.step([], 1)
    assert caught.value.step == 1 and math.isnan(caught.value.value) and not caught.value.applied
    solver.settle()
    after = [p.detach() for p in params]
    if name == "mezo_in_place":  # in-place perturb / restore may leave an ulp (zoexp/perturb.py)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(after, before))
    else:
        assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.isfinite(p).all() for p in params)


def test_stop_ends_the_run_with_diverged_and_no_test_score(tmp_path):
    loop, objective = make_loop(tmp_path, MeZO(eps=1e-2, **COMMON), fresh(), every=2, keep_best=False,
                                nan_at={10})  # forward passes: dev 0, steps 0-3: 1-8, dev 9, step 4: 10-11
    with pytest.raises(errors.Diverged) as caught:
        loop.run()
    step = caught.value.step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged"] is True and summary["diverged_step"] == step == 4
    assert "diverged at step 4" in summary["diverged_reason"]
    assert not any(key.startswith("test_") for key in summary)  # never a test score as if healthy
    trajectory = [json.loads(line) for line in (tmp_path / "trajectory.jsonl").read_text().splitlines()[1:]]
    assert [r["step"] for r in trajectory] == [0, 1, 2, 3]   # the diverged step was not recorded
    text = (tmp_path / "trajectory.jsonl").read_text() + (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["diverged"] == 1


def test_skip_step_skips_counts_and_replays(tmp_path):
    params = fresh()
    loop, _ = make_loop(tmp_path, MeZO(eps=1e-2, **COMMON), params, every=2, keep_best=False,
                        on_divergence="skip_step", nan_at={10, 12})  # steps 4 and 5 (dev eval at 9)
    summary = loop.run()
    assert summary["diverged"] is False and summary["skipped_steps"] == 2 and summary["steps"] == 8
    assert "test_accuracy" in summary
    records = [json.loads(line) for line in (tmp_path / "trajectory.jsonl").read_text().splitlines()[1:]]
    assert [r["step"] for r in records] == list(range(8))
    assert ["skipped" in r for r in records] == [False] * 4 + [True, True] + [False] * 2
    # the skipped steps changed nothing: replaying only the applied records gives the run's weights
    replayed = fresh()
    solver = MeZO(eps=1e-2, **COMMON)
    solver.setup(replayed, None)
    for record in records:
        if "skipped" not in record:
            solver.replay(record)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(replayed, params))  # keep_best=false


def test_nonfinite_hyperparameters_are_refused_up_front_in_python():
    for bad in (math.inf, math.nan, -math.inf):
        with pytest.raises(ValueError, match="solver.lr"):
            MeZO(lr=bad, steps=1)


@pytest.mark.parametrize("override,expected", [("solver.lr=inf", "solver.lr: got inf"),
                                               ("solver.eps=inf", "solver.eps: got inf"),
                                               ("solver.lr=nan", "solver.lr: got nan")])
def test_nonfinite_hyperparameters_are_refused_on_the_command_line(tmp_path, override, expected):
    assert_fails_early(tmp_path, [override], expected, "a finite number")


@pytest.mark.slow
def test_diverging_cli_run_exits_3_and_skip_step_finishes(tmp_path, sst2_dir):
    """lr=1e300 on prompt tuning: the first update (a finite float64 coefficient) overflows the
    fp32 soft prompt to inf, and the next forward is nan. (Merely huge weights, e.g. lr=1e30,
    stay finite: RMSNorm rescales them, and the losses go flat instead -- not a divergence.)"""
    common = ["hardware=cpu", "peft=prompt", f"task.data_dir={sst2_dir}", "solver.steps=4",
              "solver.batch_size=2", "solver.eval_every=0", "task.num_train=4", "task.num_dev=4",
              "task.num_eval=4", "solver.lr=1e300", "keep_best=false"]
    stopped = run_main(*common, f"hydra.run.dir={tmp_path / 'stop'}")
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    assert "error: training diverged at step 1" in stopped.stderr and "test accuracy" not in stopped.stdout
    summary = json.loads((tmp_path / "stop" / "summary.json").read_text())
    assert summary["diverged"] is True and "test_accuracy" not in summary
    skipped = run_main(*common, "on_divergence=skip_step", f"hydra.run.dir={tmp_path / 'skip'}")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["diverged"] is False and "skipped steps: 3" in skipped.stdout
