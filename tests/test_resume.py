"""Preemption: a run killed mid-way and restarted in its run dir ends exactly like an uninterrupted
one (metrics, seed trajectory, summary); a finished run dir is never overwritten.

The SLURM variant (`scontrol requeue` on the local cluster of .ci/slurm-up.sh) is marked
`slurm` and skipped when no cluster answers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_main

STEPS = 120  # long enough that a requeue lands mid-run on an idle machine
NOT_REPRODUCIBLE = {"wall_time_s", "peak_mem_gb"}  # timing/memory of this process


def tiny(sst2_dir: Path) -> list[str]:
    """A short prompt-tuning run that checkpoints every 2 steps."""
    return ["hardware=cpu", "peft=prompt", f"task.data_dir={sst2_dir}", f"solver.steps={STEPS}",
            "solver.batch_size=2", "solver.eval_every=40", "solver.lr=1e-2", "task.num_train=8",
            "task.num_dev=4", "task.num_eval=4", "checkpoint_every=2"]


def outcome(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"metrics": (run_dir / "metrics.jsonl").read_text().splitlines(),
            "trajectory": (run_dir / "trajectory.jsonl").read_text().splitlines(),
            "summary": {k: v for k, v in summary.items() if k not in NOT_REPRODUCIBLE}}


def wait_for_steps(run_dir: Path, steps: int, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    """Block until the run has recorded `steps` trajectory lines (so a checkpoint exists)."""
    path, deadline = run_dir / "trajectory.jsonl", time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= steps):
        assert proc is None or proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {steps} steps in {run_dir} after {timeout}s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def reference(sst2_dir, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = run_main(*tiny(sst2_dir), f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, outcome(run_dir)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics(sst2_dir, reference, tmp_path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "main.py", *tiny(sst2_dir), f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_steps(run_dir, 5, proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: like a node lost mid-step
    proc.wait()
    assert not (run_dir / "summary.json").exists() and (run_dir / "checkpoint.pt").exists()
    killed_at = len((run_dir / "trajectory.jsonl").read_text().splitlines())
    assert 5 <= killed_at < STEPS

    again = run_main(*tiny(sst2_dir), f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert outcome(run_dir) == reference[1]


@pytest.mark.slow
def test_finished_run_dir_is_never_overwritten(sst2_dir, reference, tmp_path) -> None:
    src, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    proc = run_main(*tiny(sst2_dir), "solver.lr=0.5", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: hydra.run.dir:"), proc.stderr[-2000:]
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name in before}
    assert after == before  # results untouched (main.log only gains the error line's context)


# ---- the same on the real local SLURM cluster ------------------------------------------------
def cluster_ready() -> str | None:
    """None when the local SLURM cluster answers with a usable node, else why not."""
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        return "sinfo not installed (run .ci/slurm-up.sh as root)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if states.returncode != 0 or not re.search(r"\b(idle|mixed|allocated)\b", states.stdout):
        return f"no SLURM node ready: {states.stdout.strip() or states.stderr.strip()}"
    return None


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\w+)", out)
    return match.group(1) if match else "GONE"


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_slurm_job_resumes_to_identical_metrics(sst2_dir, reference, tmp_path) -> None:
    reason = cluster_ready()
    if reason:
        pytest.skip(reason)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "main.py", "-m", "hydra/launcher=slurm", "hardware.cpus_per_task=1", "hardware.mem_gb=3",
         *tiny(sst2_dir), f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job_id = None
    try:
        run_dir = sweep / "0"
        wait_for_steps(run_dir, 3, launcher)
        job_id = str(yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
        deadline = time.monotonic() + 60
        while job_state(job_id) in ("RUNNING", "COMPLETING") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_state(job_id) in ("PENDING", "REQUEUED"), job_state(job_id)
        assert not (run_dir / "summary.json").exists()  # it really was stopped mid-run
        output, _ = launcher.communicate(timeout=900)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            if job_id is not None:
                subprocess.run(["scancel", job_id], check=False)
    assert launcher.returncode == 0, output[-3000:]
    log = next((sweep / ".submitit").glob("*/*_log.out")).read_text()
    assert log.count("Starting with JobEnvironment") == 2  # ran twice: once killed, once resumed
    assert outcome(run_dir) == reference[1]
