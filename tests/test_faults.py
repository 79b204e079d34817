"""Fault injection: runs are killed at random (seeded) points by SIGKILL and SIGTERM, the last
line of each JSONL file is torn, the disk fills up -- and every time the resumed run ends with
exactly the metrics, seed trajectory, summary and weights of an uninterrupted run: nothing lost,
nothing duplicated (issue 15, items 3, 4 and the fault-injection must-show).

Two layers:
* in process (fast): the real Loop, solvers, Tracker and Checkpointer over a quadratic loss;
  a "kill" is an exception no code catches, raised at a random forward pass; SIGTERM is a real
  signal sent to this process; a full disk is a write that fails with ENOSPC half-way
  (monkeypatched: simulated);
* end to end (`slow`): `python main.py` on the default model (prompt tuning, tests/test_resume.py's
  setting) killed with SIGKILL / SIGTERM at random steps, and a real full disk -- a 4 MiB tmpfs
  mounted for the test when running as root where mounting works (skipped otherwise; the
  in-process ENOSPC tests always run).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoexp.errors
from tests.conftest import ROOT, run_main
from tests.fakes import Killed, make_loop, outcome
from zoexp import checkpoint as checkpoint_module
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.zo_adam import ZOAdam

STEPS = 16
SOLVERS = {"mezo": lambda: MeZO(steps=STEPS, batch_size=2, eval_every=5, lr=0.05, eps=1e-2),
           "mezo_in_place": lambda: MeZO(steps=STEPS, batch_size=2, eval_every=5, lr=0.05, eps=1e-2, exact=False),
           "zo_adam": lambda: ZOAdam(steps=STEPS, batch_size=2, eval_every=5, lr=0.05, eps=1e-2, n_perts=2)}


def fresh() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(48))]


def weights(run_dir: Path) -> list[torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["params"]


def tear(path: Path, rng: random.Random) -> None:
    """A write cut short: the file ends in a prefix of a line (no newline)."""
    lines = path.read_bytes().splitlines(keepends=True)
    if lines:
        cut = lines[-1][: rng.randint(1, len(lines[-1]) - 2)]
        with path.open("ab") as fh:
            fh.write(cut)


FINAL: dict[Path, list[torch.Tensor]] = {}  # the weights each in-process run ended with


def run_in_process(run_dir: Path, name: str, **kwargs) -> dict:
    params = fresh()
    loop, _ = make_loop(run_dir, SOLVERS[name](), params, every=3, keep_best=False, **kwargs)
    summary = loop.run()
    FINAL[run_dir] = [p.detach().clone() for p in params]
    return summary


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict:
    out = {}
    for name in SOLVERS:
        run_dir = tmp_path_factory.mktemp(f"reference-{name}")
        run_in_process(run_dir, name)
        out[name] = (outcome(run_dir), weights(run_dir), FINAL[run_dir])
    return out


def assert_same(run_dir: Path, reference) -> None:
    """Metrics, trajectory, summary, the last checkpoint's weights and the final weights."""
    expected, expected_checkpoint, expected_final = reference
    assert outcome(run_dir) == expected
    assert all(torch.equal(a, b) for a, b in zip(weights(run_dir), expected_checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(FINAL[run_dir], expected_final))
    steps = [json.loads(line)["step"] for line in (run_dir / "trajectory.jsonl").read_text().splitlines()[1:]]
    assert steps == list(range(STEPS))  # each step exactly once


@pytest.mark.parametrize("name", SOLVERS)
def test_killed_at_random_points_with_torn_lines_resumes_exactly(tmp_path, references, name, caplog):
    caplog.set_level(logging.INFO, logger="zoexp")
    rng = random.Random(f"15:{name}")
    kills = 0
    for attempt in range(4):  # kills in a row, each resumed from what the previous one left
        try:
            run_in_process(tmp_path, name, kill_at=rng.randint(1, 14))
            break  # this attempt got to the end
        except Killed:
            kills += 1
        for jsonl_file in ("metrics.jsonl", "trajectory.jsonl"):
            if (tmp_path / jsonl_file).exists() and rng.random() < 0.8:
                tear(tmp_path / jsonl_file, rng)
    else:
        run_in_process(tmp_path, name)
    assert kills >= 2
    assert_same(tmp_path, references[name])
    assert "resumed from step" in caplog.text


def test_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    from zoexp import jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert [row for _, row in jsonl.read_lines(path)] == [{"step": 1}, {"step": 2}]
    assert "dropped a torn last line" in caplog.text
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')  # damage before the last line is not a tear
    with pytest.raises(jsonl.CorruptFile, match="line 2 is not a JSON object"):
        jsonl.read_lines(path)


def test_a_fresh_run_truncates_what_a_crashed_fresh_run_left(tmp_path, references):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 9.0}\n' * 5)
    (tmp_path / "trajectory.jsonl").write_text('{"step": 0, "seed": 1, "coef": 0.5, "decay": 0.0}\n' * 3)
    run_in_process(tmp_path, "mezo")  # no checkpoint.pt: a fresh start
    assert_same(tmp_path, references["mezo"])


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint(tmp_path, references):
    from zoexp.signals import GracefulStop

    stop = GracefulStop().install()
    try:
        loop, objective = make_loop(tmp_path, SOLVERS["mezo"](), fresh(), every=3, stop=stop)
        real_loss = objective.loss

        def loss_then_signal(batch):  # SIGTERM arrives in the middle of step 7's forward passes
            if objective.scorer.forward_passes == 16:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_loss(batch)
        objective.loss = loss_then_signal
        with pytest.raises(zoexp.errors.Terminated, match="stopped by SIGTERM at step 8 of 16"):
            loop.run()
    finally:
        stop.uninstall()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["loop"].step == 8  # the step it was in finished, then a checkpoint (not a multiple of 3)
    assert len((tmp_path / "trajectory.jsonl").read_text().splitlines()) == 1 + 8
    run_in_process(tmp_path, "mezo")
    assert_same(tmp_path, references["mezo"])


def _enospc_after(limit: int):
    """A file write that stores `limit` bytes and then fails like a full disk."""
    def write(fh, data):
        fh.write(data[:limit])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, references, monkeypatch):
    """Simulated ENOSPC (monkeypatched write) in the middle of the third checkpoint."""
    real_save, saves = checkpoint_module.torch.save, []

    def failing_save(obj, fh, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            fh.write(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from \
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, fh, *args, **kwargs)
    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(checkpoint_module.WriteFailed) as caught:
        run_in_process(tmp_path, "mezo")
    message = str(caught.value)
    assert "No space left on device" in message and "checkpoint of step 9" in message
    assert "the previous checkpoint (step 6) is intact" in message and "\n" not in message
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["loop"].step == 6
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    run_in_process(tmp_path, "mezo")
    assert_same(tmp_path, references["mezo"])


def test_full_disk_during_a_metrics_line_tears_it_and_resume_drops_it(tmp_path, references, monkeypatch):
    from zoexp import jsonl

    real_append, calls = jsonl.append, []

    def failing_append(path, row):
        calls.append(1)
        if len(calls) == 11:
            with Path(path).open("a") as fh:
                _enospc_after(7)(fh, json.dumps(row) + "\n")
        return real_append(path, row)
    monkeypatch.setattr(jsonl, "append", failing_append)
    with pytest.raises(OSError) as caught:
        run_in_process(tmp_path, "mezo")
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.setattr(jsonl, "append", real_append)
    run_in_process(tmp_path, "mezo")
    assert_same(tmp_path, references["mezo"])


# ---- end to end: python main.py, real signals, a real full disk --------------------------------
E2E_STEPS = 24


def tiny(sst2_dir: Path) -> list[str]:
    return ["hardware=cpu", "peft=prompt", f"task.data_dir={sst2_dir}", f"solver.steps={E2E_STEPS}",
            "solver.batch_size=2", "solver.eval_every=8", "solver.lr=1e-2", "task.num_train=8",
            "task.num_dev=4", "task.num_eval=4", "checkpoint_every=3"]


def e2e_outcome(run_dir: Path) -> dict:
    """Metrics, trajectory, summary, and the weights of the last checkpoint (step 21: written by
    the resumed process after it resumed; the steps after it are in the trajectory and metrics)."""
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["loop"].step == 21
    return {**outcome(run_dir), "weights": [w.tolist() for w in weights(run_dir)]}


def start(run_dir: Path, sst2_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "main.py", *tiny(sst2_dir), *extra, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(run_dir: Path, steps: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    path, deadline = run_dir / "trajectory.jsonl", time.monotonic() + timeout
    while not (path.exists() and path.read_text().count('"step"') >= steps):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {steps} steps in {run_dir} after {timeout}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def e2e_reference(sst2_dir, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("e2e-reference") / "run"
    proc = run_main(*tiny(sst2_dir), f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return e2e_outcome(run_dir)


@pytest.mark.slow
def test_e2e_sigkill_twice_with_torn_lines(sst2_dir, e2e_reference, tmp_path):
    rng = random.Random(1501)
    run_dir = tmp_path / "run"
    first = rng.randint(4, 10)
    for kill_after in (first, rng.randint(first + 4, 18)):
        proc = start(run_dir, sst2_dir)
        wait_for_steps(run_dir, kill_after, proc)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        for name in ("metrics.jsonl", "trajectory.jsonl"):
            tear(run_dir / name, rng)
    again = run_main(*tiny(sst2_dir), f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "took over the stale lock" in again.stderr
    assert "dropped a torn last line" in again.stdout + again.stderr
    assert "resumed from step" in again.stdout + again.stderr
    assert e2e_outcome(run_dir) == e2e_reference


@pytest.mark.slow
def test_e2e_sigterm_checkpoints_and_says_so(sst2_dir, e2e_reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, sst2_dir)
    wait_for_steps(run_dir, random.Random(1502).randint(4, 16), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    line = next(l for l in err.splitlines() if l.startswith("stopped by SIGTERM at step"))
    stopped_at = int(line.split("at step ")[1].split()[0])
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["loop"].step == stopped_at
    again = run_main(*tiny(sst2_dir), f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {stopped_at} of {E2E_STEPS}" in again.stdout + again.stderr
    assert e2e_outcome(run_dir) == e2e_reference


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_e2e_disk_fills_up_mid_run(sst2_dir, e2e_reference, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("needs root and permission to mount a tmpfs (the in-process ENOSPC tests simulate it)")
    try:
        run_dir = disk / "run"
        proc = start(run_dir, sst2_dir)
        wait_for_steps(run_dir, random.Random(1503).randint(4, 14), proc)
        with (disk / "filler").open("wb", buffering=0) as fh:  # take every free byte (unbuffered)
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-2000:]
        errors = [l for l in err.splitlines() if l.startswith("error: ")]
        assert len(errors) == 1 and "No space left on device" in errors[0], err[-2000:]
        assert not (run_dir / "checkpoint.pt.tmp").exists()
        step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["loop"].step
        assert step % 3 == 0 and step > 0  # the last periodic checkpoint, whole
        (disk / "filler").unlink()
        again = run_main(*tiny(sst2_dir), f"hydra.run.dir={run_dir}")
        assert again.returncode == 0, again.stderr[-3000:]
        assert e2e_outcome(run_dir) == e2e_reference
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
