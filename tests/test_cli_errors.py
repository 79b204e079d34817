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
    # issue 15, item 7: accepted nonsense and Hydra's multi-line messages
    (["solver.lr=true"], "solver.lr: got true (a boolean)", "a finite number"),
    (["solver.exact=1"], "solver.exact: got 1", "true or false"),
    (["task.num_train=true"], "task.num_train: got true (a boolean)", "an integer"),
    (["model.max_length=0"], "model.max_length: got 0", "an integer >= 2"),
    (["checkpoint_every=-1"], "checkpoint_every: got -1", "an integer >= 0"),
    (["on_divergence=maybe"], "on_divergence: got 'maybe'", "stop or skip_step"),
    (["solver.lrr=1"], "solver.lrr: not a config key", "lr, lr_schedule"),
    (["+solver.lr=1"], "+solver.lr: solver.lr already exists", "solver.lr=<value>"),
    (["solver.lr=1e-3,1e-2"], "solver.lr: got 1e-3,1e-2, a sweep", "-m to sweep"),
    # issue 15, item 6: inputs that ended in tracebacks
    (["model=hf"], "model.name: got no value", "model.name=..."),
    (["hardware.seed=abc"], "hardware.seed: got 'abc'", "an integer >= 0"),
    (["eval_batch_size=0"], "eval_batch_size: got 0", "an integer >= 1"),
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


def test_model_dir_without_weights(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert_fails_early(tmp_path, [f"model.name={folder}"], "model.name: ", "allowed: a model directory")


def test_malformed_data_file_names_the_file(tmp_path):
    data = tmp_path / "sst2"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\nnice\t1\nbad\t0\textra\n" * 20)
    (data / "dev.tsv").write_text("sentence\tlabel\nnice\t1\n")
    assert_fails_early(tmp_path, [f"task.data_dir={data}"], f"task.data_dir: cannot read {data / 'train.tsv'}",
                       "allowed: a well-formed UTF-8 TSV file")
