"""Bad input fails early: exit != 0, one line naming the field and what is allowed,
nothing loaded and no run directory left behind."""

from __future__ import annotations

import pytest

from tests.conftest import assert_fails_early, run_main

CASES = [
    (["solver=nope"], "solver: no option 'nope'; allowed: ", "mezo"),
    (["solver.lr=-1"], "solver.lr: got -1", ">= 0"),
    (["task.num_train=0"], "task.num_train: got 0", ">= 1"),
    (["model.name=/no/such/dir"], "model.name: no such directory '/no/such/dir'", "hub id"),
    (["solver.batch_size=64", "task.num_train=32"], "solver.batch_size: got 64", "at most 32"),
    (["task.data_dir=/no/such/data"], "task.data_dir: no such directory", "allowed"),
    (["hardware.dtype=fp8"], "model.dtype: got 'fp8'", "bf16"),
    (["objective=bleu"], "objective: got 'bleu'", "classification"),
]


@pytest.mark.parametrize("overrides,expected,allowed", CASES, ids=[c[0][0] for c in CASES])
def test_bad_input_fails_with_one_line(tmp_path, overrides, expected, allowed):
    assert_fails_early(tmp_path, overrides, expected, allowed)


def test_missing_column_names_the_column(tmp_path):
    data = tmp_path / "sst2"
    data.mkdir()
    (data / "train.tsv").write_text("text\tlabel\nnice\t1\n" * 40)
    (data / "dev.tsv").write_text("text\tlabel\nnice\t1\n" * 10)
    proc = run_main(f"task.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "['sentence']" in lines[0] and "required columns" in lines[0]


def test_finished_run_dir_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    proc = run_main(f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode != 0 and "already holds a finished run" in proc.stderr
    assert (run_dir / "summary.json").read_text() == "{}"
