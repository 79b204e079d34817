"""A 3-job sweep through hydra/launcher=slurm on the real local cluster (.ci/slurm-up.sh),
its summaries read back by zoexp.summarize and written by SummaryCallback at the sweep's end."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_main
from tests.test_resume import cluster_ready
from zoexp.summarize import summarize

LRS = (0.001, 0.01, 0.1)


@pytest.mark.slurm
@pytest.mark.slow
def test_three_job_sweep_on_slurm(sst2_dir, tmp_path) -> None:
    reason = cluster_ready()
    if reason:
        pytest.skip(reason)
    sweep = tmp_path / "sweep"
    proc = run_main("-m", "hydra/launcher=slurm", "hardware=cpu", "hardware.cpus_per_task=1", "hardware.mem_gb=3",
                    "peft=prompt", f"task.data_dir={sst2_dir}", "solver.steps=2", "solver.batch_size=2",
                    "solver.eval_every=0", "task.num_train=4", "task.num_dev=4", "task.num_eval=4",
                    f"solver.lr={','.join(map(str, LRS))}", f"hydra.sweep.dir={sweep}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    job_ids = set()
    for num, lr in enumerate(LRS):
        hydra_cfg = yaml.safe_load((sweep / str(num) / ".hydra" / "hydra.yaml").read_text())["hydra"]
        job_ids.add(str(hydra_cfg["job"]["id"]).split("_")[0])  # set on the node from SLURM_JOB_ID
        assert f"solver.lr={lr}" in hydra_cfg["overrides"]["task"]
        summary = json.loads((sweep / str(num) / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["fwd_passes"] == 4
    assert len(job_ids) == 1 and job_ids.pop().isdigit()  # one SLURM array

    result = summarize(sweep)
    assert result.keys == ["solver.lr"] and not result.failed
    assert [row["solver.lr"] for row in result.rows] == list(LRS)
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in result.rows)
    markdown = (sweep / "summary.md").read_text()  # written by SummaryCallback at the sweep's end
    assert markdown.count("\n| 0.") == 3
