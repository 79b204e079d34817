"""Bad solver hyperparameters fail from the command line with one line naming the field,
before the model loads; and the user's 1.5-SPSA sweep command completes its three jobs."""

from __future__ import annotations


import pytest

from tests.conftest import assert_fails_early, run_main

CASES = [
    (["solver=spsa", "solver.n_perts=0"], "solver.n_perts: got 0", ">= 1"),
    (["solver=spsa15", "solver.n_perts=-3"], "solver.n_perts: got -3", ">= 1"),
    (["solver=spsa", "solver.eps=0"], "solver.eps: got 0", "> 0"),
    (["solver=subzero", "solver.eps=-1e-3"], "solver.eps: got -0.001", "> 0"),
    (["solver=spsa15", "solver.saturating_alpha=0"], "solver.saturating_alpha: got 0", "(0, 1]"),
    (["solver=spsa15", "solver.saturating_alpha=1.5"], "solver.saturating_alpha: got 1.5", "(0, 1]"),
    (["solver=subzero", "peft=lora", "solver.rank=16"], "solver.rank: got 16", "1..8"),
    (["solver=subzero", "solver.rank=0"], "solver.rank: got 0", ">= 1"),
    (["solver=spsa", "solver.dist=uniform"], "solver.dist: got 'uniform'", "rademacher"),
    (["solver=fo_adam", "objective=accuracy"], "objective: got 'accuracy'", "classification"),
    (["solver=icl", "solver.k=-1"], "solver.k: got -1", ">= 0"),
]


@pytest.mark.parametrize("overrides,expected,allowed", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_hyperparameter_fails_with_one_line_before_the_model_loads(tmp_path, overrides, expected, allowed):
    assert_fails_early(tmp_path, overrides, expected, allowed)


@pytest.mark.slow  # 81 + 321 + 1281 forward passes of one short prompt
def test_the_users_spsa15_sweep_completes_its_three_jobs(tmp_path, sst2_dir):
    """The user's command as typed (overrides after -m); kept affordable on a CPU with prompt
    tuning (5,760 trainable parameters) and Rademacher directions."""
    import json

    sweep = tmp_path / "sweep"
    proc = run_main("solver=spsa15", "task=sst2", "-m", "solver.n_perts=40,160,640",  # as the user types it
                    "solver.steps=1", "solver.batch_size=1", "solver.eval_every=0", "peft=prompt",
                    "solver.dist=rademacher",
                    "task.num_train=1", "task.num_dev=1", "task.num_eval=1", f"task.data_dir={sst2_dir}",
                    f"hydra.sweep.dir={sweep}", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, n in (("0", 40), ("1", 160), ("2", 640)):
        assert json.loads((sweep / job / "summary.json").read_text())["fwd_passes"] == 2 * n + 1
