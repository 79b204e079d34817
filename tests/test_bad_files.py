"""Damaged files are one line naming the file (issue 15, items 6 and 8): malformed local data,
and the inputs of `python -m zoexp.replay` and `python -m zoexp.summarize`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from tasks.sst2 import SST2
from zoexp import replay as R
from zoexp import summarize as S
from zoexp.errors import ConfigError

DATA = {  # file name -> (bytes, what the one line must say)
    "empty.tsv": (b"", "is empty (0 bytes)"),
    "header_only.tsv": (b"sentence\tlabel\n", "has no rows"),
    "ragged.tsv": (b"sentence\tlabel\nnice\t1\nbad\t0\textra\nok\t1\n", "Expected 2 fields in line 3, saw 3"),
    "unclosed_quote.tsv": (b'sentence\tlabel\nnice\t1\n"unclosed\t1\nok\t0\n', "EOF inside string"),
    "latin1.tsv": ("sentence\tlabel\nna\xefve\t1\nbad\t0\n".encode("latin-1"), "can't decode byte"),
    "broken.jsonl": (b'{"sentence": "a", "label": 1}\n{"sentence": "b", "lab\n', "JSON parse error"),
    "null_field.jsonl": (b'{"sentence": "a", "label": 1}\n{"sentence": null, "label": 0}\n',
                         "row 2: column 'sentence' is empty (null)"),
    "missing_field.tsv": (b"sentence\tlabel\nnice\t1\nbad\n", "row 2: column 'label' is empty (null)"),
}


@pytest.mark.parametrize("name", DATA)
def test_malformed_data_file_is_one_line_naming_it(tmp_path, name):
    content, expected = DATA[name]
    suffix = Path(name).suffix
    (tmp_path / f"train{suffix}").write_bytes(content)
    (tmp_path / f"dev{suffix}").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        SST2(data_dir=str(tmp_path), num_train=1, num_dev=0, num_eval=1).sample()
    line = str(caught.value)
    assert line.startswith("task.data_dir: ") and str(tmp_path / f"train{suffix}") in line
    assert expected in line and "allowed: " in line and "\n" not in line


# ---- replay ----------------------------------------------------------------------------------
def replay_dir(tmp_path: Path, trajectory: str | None, config: str | None = None) -> Path:
    (tmp_path / ".hydra").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".hydra" / "config.yaml").write_text(config if config is not None else yaml.safe_dump(
        {"solver": {"_target_": "zoexp.solvers.mezo.MeZO", "steps": 2}, "model": {"name": "x"},
         "hardware": {"seed": 0, "device": "cpu"}}))
    if trajectory is not None:
        (tmp_path / "trajectory.jsonl").write_text(trajectory)
    return tmp_path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("trajectory", ["", '{"format": "zoexp-trajectory", "version": 2, "seed_bits": 64}\n'],
                         ids=["empty", "header_only"])
def test_replaying_an_empty_trajectory_fails_with_a_message(tmp_path, capsys, trajectory):
    assert R.main([str(replay_dir(tmp_path, trajectory))]) == 2
    assert "holds no steps" in one_error_line(capsys)


def test_replay_names_a_damaged_trajectory_line(tmp_path, capsys):
    run = replay_dir(tmp_path, '{"step": 0, "seed": 1, "coef": 0.1}\nnot json at all\n{"step": 2, "seed": 1}\n')
    assert R.main([str(run)]) == 2
    err = one_error_line(capsys)
    assert "trajectory.jsonl: line 2 is not a JSON object" in err


def test_replay_names_a_damaged_config(tmp_path, capsys):
    run = replay_dir(tmp_path, '{"step": 0, "seed": 1, "coef": 0.1}\n', config="solver: [unclosed\n  : :")
    assert R.main([str(run)]) == 2
    assert "config.yaml: cannot be read" in one_error_line(capsys)


def test_replay_names_a_damaged_checkpoint_and_summary(tmp_path, capsys):
    run = replay_dir(tmp_path, '{"step": 0, "seed": 1, "coef": 0.1, "decay": 0.0}\n')
    (run / "checkpoint.pt").write_bytes(b"\x00" * 100)
    assert R.main([str(run), "--verify"]) == 2
    assert "checkpoint.pt: cannot be read" in one_error_line(capsys)
    (run / "summary.json").write_text('{"best_step": ')
    assert R.main([str(run), "--step", "best"]) == 2
    assert "summary.json: has no readable best_step" in one_error_line(capsys)


# ---- summarize -------------------------------------------------------------------------------
def job(sweep: Path, num: str, overrides: list[str] | str | None, summary: dict | str | None) -> Path:
    folder = sweep / num
    (folder / ".hydra").mkdir(parents=True)
    if overrides is not None:
        text = overrides if isinstance(overrides, str) else yaml.safe_dump(overrides)
        (folder / ".hydra" / "overrides.yaml").write_text(text)
    (folder / ".hydra" / "config.yaml").write_text("{}\n")
    if summary is not None:
        (folder / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return folder


def result(dev: float) -> dict:
    return {"metric": "accuracy", "best_dev_accuracy": dev, "test_accuracy": dev - 0.1, "steps": 4,
            "fwd_passes": 8, "best_step": 4, "wall_time_s": 1.0, "peak_mem_gb": 0.5}


def test_summarize_names_damaged_files_and_dropped_jobs(tmp_path, caplog, capsys):
    caplog.set_level(logging.WARNING)
    job(tmp_path, "0", ["solver.lr=0.1"], result(0.7))
    job(tmp_path, "1", ["solver.lr=0.2"], '{"metric": "accuracy", "best_dev')          # torn summary
    job(tmp_path, "2", "- solver.lr=0.3\n- [unclosed", result(0.6))                    # broken YAML
    job(tmp_path, "3", None, result(0.5))                                               # no overrides.yaml
    job(tmp_path, "4", ["solver.lr=0.4"], {**result(0.1), "diverged": True,
                                           "diverged_reason": "training diverged at step 3: the training loss is nan"})
    (tmp_path / ".failed").mkdir()
    (tmp_path / ".failed" / "9.json").write_text("{not json")
    assert S.main([str(tmp_path)]) == 0  # one configuration still has a result
    summary = S.summarize(tmp_path)
    failed = {j.name: j.error for j in summary.failed}
    assert failed["1"].startswith("corrupt summary.json") and failed["2"].startswith("corrupt overrides.yaml")
    assert failed["4"] == "diverged: training diverged at step 3: the training loss is nan"
    assert "3" not in {j.name for j in summary.jobs}
    assert f"{tmp_path / '1' / 'summary.json'}: corrupt summary" in caplog.text
    assert f"{tmp_path / '2' / '.hydra' / 'overrides.yaml'}: corrupt overrides file" in caplog.text
    assert "job 3: dropped from the summary" in caplog.text and "has no .hydra/overrides.yaml" in caplog.text
    assert f"{tmp_path / '.failed' / '9.json'}: corrupt failure record" in caplog.text
    assert [row["solver.lr"] for row in summary.rows] == [0.1]


def test_summarize_of_a_missing_directory_is_one_line(tmp_path, capsys):
    assert S.main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in one_error_line(capsys)
