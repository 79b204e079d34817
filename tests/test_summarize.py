"""zoexp.summarize on a synthetic multirun: grouping, averaging over seeds, failed jobs, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from zoexp import summarize as S


def make_job(sweep: Path, num: int, overrides: list[str], summary: dict | None,
             config: dict | None = None, choices: dict | None = None) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {}))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices or {}}}}))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


def result(dev: float, test: float, steps: int = 10) -> dict:
    return {"metric": "accuracy", "best_dev_accuracy": dev, "test_accuracy": test, "steps": steps,
            "fwd_passes": 2 * steps, "best_step": steps, "wall_time_s": 1.5, "peak_mem_gb": 0.5}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 x 2 grid (n_perts x batch_size) x 2 seeds; one job of cell (4, 32) failed."""
    num = 0
    for n_perts in (4, 16):
        for batch in (8, 32):
            for seed in (0, 1):
                failed = (n_perts, batch, seed) == (4, 32, 1)
                dev = 0.5 + n_perts / 100 + batch / 1000 + seed / 100
                make_job(tmp_path, num, [f"solver.n_perts={n_perts}", f"solver.batch_size={batch}",
                                         f"hardware.seed={seed}", "solver.lr=1e-4"],
                         None if failed else result(dev, dev - 0.1),
                         config={"solver": {"lr": 1e-4, "n_perts": n_perts}}, choices={"solver": "spsa15"})
                num += 1
    return tmp_path


def test_swept_keys_exclude_constant_overrides(sweep: Path) -> None:
    jobs = S.load_jobs(sweep)
    assert [j.name for j in jobs] == [str(i) for i in range(8)]
    assert S.swept_keys(jobs) == ["solver.n_perts", "solver.batch_size", "hardware.seed"]


def test_rows_average_seeds_and_list_failed_jobs(sweep: Path) -> None:
    summary = S.summarize(sweep)
    assert summary.keys == ["solver.n_perts", "solver.batch_size"]  # seeds are averaged, not grouped
    assert [(r["solver.n_perts"], r["solver.batch_size"], r["n"]) for r in summary.rows] == \
        [(4, 8, 2), (4, 32, 1), (16, 8, 2), (16, 32, 2)]
    row = summary.rows[2]  # n_perts 16, batch 8: dev 0.668 and 0.678
    assert row["best_dev_accuracy"] == pytest.approx(0.673)
    assert row["best_dev_accuracy_std"] == pytest.approx(0.00707107, rel=1e-5)
    assert row["test_accuracy"] == pytest.approx(0.573)
    assert [j.name for j in summary.failed] == ["3"]
    assert "no summary.json" in summary.failed[0].error


def test_keys_from_config_and_group_choices(sweep: Path) -> None:
    summary = S.summarize(sweep, keys=["solver", "solver.lr", "solver.n_perts"])
    assert {(r["solver"], r["solver.lr"]) for r in summary.rows} == {("spsa15", 1e-4)}
    assert [r["n"] for r in summary.rows] == [3, 4]


def test_files_and_heatmap(sweep: Path, tmp_path_factory) -> None:
    out = tmp_path_factory.mktemp("out")
    assert S.main([str(sweep), "--out", str(out)]) == 0
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and float(rows[3]["test_accuracy"]) == pytest.approx(0.597)
    with (out / "jobs.csv").open() as fh:
        jobs = list(csv.DictReader(fh))
    assert [j["status"] for j in jobs].count("failed") == 1
    markdown = (out / "summary.md").read_text()
    assert "| 16 | 32 | 2 | 0.6970 ± 0.0071 | 0.5970 ± 0.0071 | 10 | 20 | 1.5 | 0.5 |" in markdown and "- job 3 (" in markdown
    png = (out / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_heatmap_cell_takes_best_dev_configuration(tmp_path: Path) -> None:
    """With lr swept too, a cell reports the test score of the lr with the best dev score."""
    num = 0
    for n_perts in (4, 16):
        for batch in (8, 32):
            for lr, dev, test in ((1e-4, 0.9, 0.1), (1e-3, 0.8, 0.7)):
                make_job(tmp_path, num, [f"solver.n_perts={n_perts}", f"solver.batch_size={batch}",
                                         f"solver.lr={lr}"], result(dev, test))
                num += 1
    summary = S.summarize(tmp_path)
    captured = {}

    def fake_text(self, x, y, text, **kwargs):  # record the annotations instead of drawing
        captured[(x, y)] = text

    import matplotlib.axes

    original = matplotlib.axes.Axes.text
    matplotlib.axes.Axes.text = fake_text
    try:
        S.heatmap(summary, "solver.n_perts", "solver.batch_size", tmp_path / "h.png")
    finally:
        matplotlib.axes.Axes.text = original
    assert set(captured.values()) == {"0.100"}


def test_callback_records_failures_and_writes_summary(sweep: Path) -> None:
    callback = S.SummaryCallback()

    def fail(job: str, message: str) -> None:
        config = OmegaConf.create({"hydra": {"mode": "MULTIRUN", "sweep": {"dir": str(sweep)},
                                             "runtime": {"output_dir": str(sweep / job)}}})
        ret = JobReturn(overrides=["solver.n_perts=0"], working_dir="/cwd", status=JobStatus.FAILED)
        ret.return_value = ValueError(message)
        callback.on_job_end(config, ret)
        assert ret.status == JobStatus.COMPLETED and ret.return_value is None  # recorded: the sweep goes on

    fail("3", "Traceback ...\nsolver.n_perts: got 0; allowed: an integer >= 1")
    fail("8", "solver.lr: got -1.0; allowed: a number >= 0")  # its folder was removed by the run
    summary = S.summarize(sweep)
    assert [(j.name, j.error) for j in summary.failed] == [
        ("3", "ValueError: solver.n_perts: got 0; allowed: an integer >= 1"),
        ("8", "ValueError: solver.lr: got -1.0; allowed: a number >= 0")]
    with pytest.raises(SystemExit) as ended:  # the summary is written, then the sweep says it failed
        callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert ended.value.code == 1
    assert "- job 8 (solver.n_perts=0): ValueError: solver.lr" in (sweep / "summary.md").read_text()
    assert (sweep / "heatmap.png").exists()


def test_empty_dir_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert S.main([str(tmp_path)]) == 2
    assert "no jobs found" in capsys.readouterr().err
