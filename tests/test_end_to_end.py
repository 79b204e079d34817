"""End to end on the default model (SmolLM2-135M) and SST-2: runs, files, sweeps, learning."""

from __future__ import annotations

import json

import yaml

from tests.conftest import run_main

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
    header, *records = _read_jsonl(run_dir / "trajectory.jsonl")
    assert header["format"] == "zoexp-trajectory" and [r["step"] for r in records] == [0, 1, 2, 3]


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
