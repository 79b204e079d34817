"""A run dir belongs to one run (issue 15, items 1, 3 and the run-dir inputs of item 6): it
resumes only under the configuration it holds, one process writes it at a time (run.lock,
stale locks taken over), and an unusable directory is one line and exit 2."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import ROOT, run_main

TINY = ["hardware=cpu", "peft=prompt", "solver.steps=4", "solver.batch_size=2", "solver.eval_every=0",
        "task.num_train=4", "task.num_dev=4", "task.num_eval=4", "checkpoint_every=2"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def unfinished_run(folder: Path, overrides: list[str]) -> dict[str, bytes]:
    """What a killed run leaves: Hydra's config of `overrides`, a checkpoint, metrics, trajectory."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "checkpoint.pt").write_bytes(b"the killed run's checkpoint")
    (folder / "metrics.jsonl").write_text('{"step": 1, "train_loss": 0.5}\n')
    (folder / "trajectory.jsonl").write_text('{"step": 0, "seed": 7, "coef": 0.1, "decay": 0.0}\n')
    return snapshot(folder)


def test_resuming_with_another_configuration_is_refused(tmp_path, sst2_dir):
    run_dir = tmp_path / "run"
    before = unfinished_run(run_dir, [*TINY, f"task.data_dir={sst2_dir}"])
    proc = run_main(*TINY, f"task.data_dir={sst2_dir}", "solver.lr=0.5", "hardware.seed=1",
                    f"hydra.run.dir={run_dir}", timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: hydra.run.dir: ") and "another configuration" in lines[0]
    assert "hardware.seed" in lines[0] and "solver.lr" in lines[0] and "allowed:" in lines[0]
    assert snapshot(run_dir) == before  # nothing overwritten, .hydra/config.yaml included


def test_only_keys_that_cannot_change_a_result_may_differ():
    from zoexp import rundir

    saved = {"solver": {"lr": 0.01, "eps": 0.01}, "logger": {"_target_": None}, "checkpoint_every": 0,
             "hardware": {"seed": 0, "mem_gb": 64, "device": "cpu"}}
    new = {"solver": {"lr": 0.01, "eps": 0.01}, "logger": {"_target_": "wandb", "project": "x"},
           "checkpoint_every": 10, "hardware": {"seed": 0, "mem_gb": 8, "device": "cpu"}}
    assert rundir.differing_keys(saved, new) == []
    new["hardware"]["device"], new["solver"]["eps"] = "cuda", 0.1
    assert rundir.differing_keys(saved, new) == ["hardware.device", "solver.eps"]
    assert rundir.differing_keys({"solver": {"lr": float("nan")}}, {"solver": {"lr": float("nan")}}) == []


def test_a_running_process_keeps_the_directory(tmp_path):
    """A second process refuses a directory whose lock a live process holds, and leaves it alone."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "run.lock", "w") as held:  # this test process is "the other run"
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"host=elsewhere pid={os.getpid()}\n")
        held.flush()
        proc = run_main(*TINY, f"hydra.run.dir={run_dir}", timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert "is in use by another process" in lines[0] and f"pid={os.getpid()}" in lines[0]
        assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]  # nothing written, nothing removed


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text("host=gone-node pid=999999 since=2026-12-01T00:00:00\n")
    proc = run_main(*TINY, "solver.lr=-1", f"hydra.run.dir={run_dir}", timeout=300)  # fails after locking
    assert "took over the stale lock of host=gone-node pid=999999" in proc.stderr
    assert proc.returncode == 2 and "error: solver.lr: got -1" in proc.stderr
    assert not run_dir.exists()  # bad input: the (empty) directory is removed, lock and all


@pytest.mark.slow
def test_a_fresh_run_truncates_what_a_crashed_fresh_run_left(tmp_path, sst2_dir):
    """Same configuration, no checkpoint: the run starts over, and its files hold its own steps only."""
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"task.data_dir={sst2_dir}"]
    unfinished_run(run_dir, overrides)
    (run_dir / "checkpoint.pt").unlink()
    proc = run_main(*overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = tmp_path / "reference"
    assert run_main(*overrides, f"hydra.run.dir={reference}").returncode == 0
    for name in ("metrics.jsonl", "trajectory.jsonl"):
        assert (run_dir / name).read_text() == (reference / name).read_text()


def _read_only_dir(path: Path) -> bool:
    """A directory this process cannot write: a read-only tmpfs as root, else chmod 0o555."""
    path.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                              capture_output=True).returncode == 0
        return done
    path.chmod(0o555)
    return True


@pytest.mark.parametrize("kind", ["file", "file_parent", "read_only"])
def test_an_unusable_run_dir_is_one_line(tmp_path, kind):
    blocker = tmp_path / "occupied"
    blocker.write_text("a file, not a directory")
    target = {"file": blocker, "file_parent": blocker / "run", "read_only": tmp_path / "ro" / "run"}[kind]
    if kind == "read_only" and not _read_only_dir(tmp_path / "ro"):
        pytest.skip("cannot make a read-only directory here")
    try:
        proc = run_main(*TINY, f"hydra.run.dir={target}", timeout=300)
    finally:
        if kind == "read_only" and os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], capture_output=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: hydra.run.dir: got ") and "allowed: " in lines[0]
    assert blocker.read_text() == "a file, not a directory"
    assert not (tmp_path / "ro" / "run").exists()
