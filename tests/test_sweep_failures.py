"""One failing job does not end a sweep (issue 15, item 5): it is recorded, the other jobs run,
the automatic summary is written with the failure listed, and the exit code says a job failed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_main


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_summarised(tmp_path, sst2_dir):
    sweep = tmp_path / "sweep"
    proc = run_main("-m", "hardware=cpu", "peft=prompt", f"task.data_dir={sst2_dir}", "solver.steps=1",
                    "solver.batch_size=2", "solver.eval_every=0", "task.num_train=4", "task.num_dev=4",
                    "task.num_eval=4", "solver.lr=-1,0.01", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error: solver.lr: got -1" in proc.stderr               # the job's own one line
    assert "error: sweep: 1 of 2 jobs failed (0)" in proc.stderr   # and the sweep's
    assert json.loads((sweep / "1" / "summary.json").read_text())["steps"] == 1  # the next job ran
    markdown = (sweep / "summary.md").read_text()
    assert "Failed jobs:" in markdown and "- job 0 (" in markdown and "solver.lr: got -1" in markdown
    assert "\n| 0.01 | 1 |" in markdown
