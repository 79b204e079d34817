"""benchmarks/solvers.py: the solver list comes from conf/solver, forward passes per step are
measured, rows aggregate to mean +- std per solver, and a smoke run on the CPU completes."""

from __future__ import annotations

import json
import statistics
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import solvers as bench  # noqa: E402


def test_solver_list_is_read_from_the_config_folder():
    assert bench.solver_names() == sorted(p.stem for p in (ROOT / "conf" / "solver").glob("*.yaml"))
    assert {"mezo", "zo_muon", "zo_adamu", "subzero_adamu", "zeroshot"} <= set(bench.solver_names())


def test_aggregate_is_mean_and_sample_std_over_seeds_and_counts_failures():
    def row(solver, seed, dev, test, **kw):
        return {"solver": solver, "seed": seed, "steps": 50, "fwd_per_step": 2, "metric": "accuracy",
                "best_dev_accuracy": dev, "test_accuracy": test, "wall_time_s": 10.0 + seed,
                "peak_mem_gb": 1.0, "fwd_passes": 100, **kw}

    rows = [row("mezo", 0, 0.70, 0.60), row("mezo", 1, 0.80, 0.64), row("mezo", 2, 0.75, 0.62),
            row("zo_muon", 0, 0.9, 0.9), {"solver": "zo_muon", "seed": 1, "steps": 50, "fwd_per_step": 2,
                                          "failed": True, "error": "boom"}]
    mezo, muon = bench.aggregate(rows)
    assert mezo["best_dev_accuracy_mean"] == pytest.approx(0.75)
    assert mezo["best_dev_accuracy_std"] == pytest.approx(statistics.stdev([0.70, 0.80, 0.75]))
    assert mezo["test_accuracy_mean"] == pytest.approx(0.62) and mezo["failed"] == 0
    assert muon["failed"] == 1 and muon["runs"] == 2 and muon["test_accuracy_std"] == 0.0
    text = bench.table([mezo, muon], [0, 1, 2])
    assert "| mezo | 50 | 2 | 100 | 0.750 ± 0.050 | 0.620 ± 0.020 |" in text
    assert "| zo_muon |" in text and "| 1/2 |" in text


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit, match="--solvers: unknown"):
        bench.main(["--solvers", "mezo,nope"])
    with pytest.raises(SystemExit, match="--solver-set"):
        bench.parse_solver_sets(["mezo-solver.lr=1"], bench.solver_names())


@pytest.mark.slow  # five short runs of the default model
def test_smoke_run_on_cpu(tmp_path, sst2_dir):
    out = tmp_path / "bench"
    code = bench.main(["--solvers", "mezo,zeroshot", "--budget", "4", "--batch-size", "2", "--num-dev", "4",
                       "--num-eval", "4", "--seeds", "0", "1", "--device", "cpu", "--set", "task.num_train=8",
                       f"task.data_dir={sst2_dir}", "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["solver"], r["seed"]) for r in rows) == [("mezo", 0), ("mezo", 1), ("zeroshot", 0), ("zeroshot", 1)]
    mezo = [r for r in rows if r["solver"] == "mezo"]
    assert all(r["fwd_per_step"] == 2 and r["steps"] == 2 and r["fwd_passes"] == 4 for r in mezo)  # measured
    assert (out / "logs" / "mezo-seed1.log").read_text().startswith("python main.py solver=mezo")
    table = (out / "solvers.md").read_text()
    assert "| mezo | 2 | 2 | 4 |" in table and "| zeroshot | 0 | 0 | 0 |" in table
    assert json.loads((out / "solvers.json").read_text())[0]["runs"] == 2


def test_time_limit_starts_no_run_after_it_and_tables_the_finished_ones(tmp_path, monkeypatch):
    """--time-limit: runs not started by the deadline are left out of runs.jsonl and of the
    table (not counted as failures); the ones that ran are tabled with their run count."""
    clock = iter(range(0, 10_000, 100))  # each monotonic() read advances 100 s
    monkeypatch.setattr(bench.time, "monotonic", lambda: float(next(clock)))

    def fake_main(overrides, log):
        run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir="))
        steps = int(next(o.split("=", 1)[1] for o in overrides if o.startswith("solver.steps=")))
        (tmp_path / run_dir).mkdir(parents=True, exist_ok=True)
        summary = {"steps": steps, "fwd_passes": 2 * steps, "metric": "accuracy", "best_dev_accuracy": 0.7,
                   "test_accuracy": 0.6, "wall_time_s": 1.0, "peak_mem_gb": 1.0}
        (tmp_path / run_dir / "summary.json").write_text(json.dumps(summary))
        return 0, 1.0

    monkeypatch.setattr(bench, "run_main", fake_main)
    out = tmp_path / "out"
    # deadline = first read + 250 s: the reads at +100 and +200 start runs, +300 on do not
    code = bench.main(["--solvers", "mezo", "--budget", "4", "--seeds", "0", "1", "2", "3",
                       "--time-limit", str(250 / 60), "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1]
    assert "| mezo | 2 | 2 | 4 | 0.700 ± 0.000 | 0.600 ± 0.000 | 1 | 1.00 | 2/2 |" in (out / "solvers.md").read_text()
