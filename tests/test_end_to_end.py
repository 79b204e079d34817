"""End to end on the default model (SmolLM2-135M) and SST-2: runs, files, sweeps, learning."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tasks.sst2 import SST2
from tests.conftest import run_main
from zoexp.objectives import CandidateScorer, build_objective
from zoexp.solvers.mezo import MeZO

TINY = ["solver.steps=4", "solver.eval_every=2", "solver.batch_size=4", "task.num_train=16",
        "task.num_dev=8", "task.num_eval=8"]


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_single_run_writes_metrics_and_summary(tmp_path, sst2_dir):
    run_dir = tmp_path / "run"
    proc = run_main(*TINY, f"task.data_dir={sst2_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dev accuracy:" in proc.stdout and "test accuracy:" in proc.stdout
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["fwd_passes"] for r in train] == [2, 4, 6, 8]  # MeZO: two forward passes a step
    assert [r["step"] for r in rows if "dev_accuracy" in r] == [0, 2, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["fwd_passes"] == 8 and summary["metric"] == "accuracy"
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert len(_read_jsonl(run_dir / "trajectory.jsonl")) == 4


def test_multirun_gives_each_job_its_own_files(tmp_path, sst2_dir):
    sweep = tmp_path / "sweep"
    proc = run_main("task=sst2", "-m", "solver.lr=1e-6,1e-5", *TINY, f"task.data_dir={sst2_dir}",
                    f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, lr in (("0", 1e-6), ("1", 1e-5)):
        cfg = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        assert float(cfg["solver"]["lr"]) == lr
        assert (sweep / job / "metrics.jsonl").stat().st_size > 0
        assert json.loads((sweep / job / "summary.json").read_text())["steps"] == 4


def test_mezo_lowers_the_training_loss(default_model, sst2_dir):
    """40 MeZO steps on 32 SST-2 training examples lower their loss (fixed seeds).

    The prompt " It was" -> terrible / great starts heavily biased toward " great", a
    direction ZO finds quickly; the check is on the whole fixed set, not a noisy batch."""
    bundle = default_model
    start = [p.detach().clone() for p in bundle.params]
    task = SST2(data_dir=str(sst2_dir), num_train=32, num_dev=0, num_eval=1, seed=0)
    train = task.sample()["train"]
    objective = build_objective("classification", CandidateScorer(bundle.model, bundle.tokenizer, bundle.device), task)
    before = objective.loss(train)
    solver = MeZO(steps=40, batch_size=16, lr=1e-4, eps=1e-3, seed=0)
    solver.setup(bundle.params, objective, train)
    for step in range(solver.steps):
        solver.step(train[(step % 2) * 16 : (step % 2 + 1) * 16], step)
    after = objective.loss(train)
    with torch.no_grad():
        for p, saved in zip(bundle.params, start):
            p.copy_(saved)  # leave the shared fixture as it was
    assert after < before - 0.05, (before, after)
