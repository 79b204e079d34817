"""Words where users want them (issue 15, item 8): progress lines when there is no terminal
(SLURM logs), no "-inf" when there is no dev set, a word on a SLURM restart. (Resume and
SIGTERM messages: tests/test_faults.py; replay and summarize: tests/test_bad_files.py.)"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

LINE = re.compile(r"step (\d+)/5 \(\d+%\)  loss [\d.]+  best dev (-|[\d.]+)  [\d.]+ steps/s  ETA \d+:\d\d")


def test_progress_lines_when_stdout_is_not_a_terminal(caplog):
    from zoexp.progress import Progress

    caplog.set_level(logging.INFO, logger="zoexp")
    progress = Progress(total=5, initial=0, visible=True, every_s=1e-9)  # pytest captures: no terminal
    for step in range(1, 6):
        progress.update(step, 0.5, 0.75 if step > 2 else float("-inf"))
    progress.close()
    steps = [int(m.group(1)) for m in map(LINE.search, caplog.messages) if m]
    assert steps == [1, 2, 3, 4, 5]
    caplog.clear()
    quiet = Progress(total=5, initial=0, visible=True, every_s=3600)  # only the last step is due
    for step in range(1, 6):
        quiet.update(step, 0.5, 0.75)
    assert [int(m.group(1)) for m in map(LINE.search, caplog.messages) if m] == [5]
    caplog.clear()
    hidden = Progress(total=5, initial=0, visible=False, every_s=1e-9)  # ranks other than 0
    hidden.update(1, 0.5, 0.75)
    assert not caplog.messages


@pytest.mark.slow
def test_run_without_dev_set_and_restarted_by_slurm_says_so(tmp_path, sst2_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "4242"}
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "main.py", "hardware=cpu", "peft=prompt", f"task.data_dir={sst2_dir}",
                           "solver.steps=3", "solver.batch_size=2", "solver.eval_every=0", "task.num_train=4",
                           "task.num_dev=0", "task.num_eval=4", "progress_every_s=0.001", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "-inf" not in out and "dev accuracy: - (no dev examples: task.num_dev=0)" in proc.stdout
    assert "SLURM job 4242 restarted (requeue #1)" in out
    assert [int(m) for m in re.findall(r"step (\d)/3 \(\d+%\)  loss", out)] == [1, 2, 3]
    assert "steps/s  ETA " in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_dev_accuracy"] is None and 0.0 <= summary["test_accuracy"] <= 1.0
