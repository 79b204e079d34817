"""The dolly task: template, ROUGE-L scoring, disjoint splits of the one hub split, local and hub
loading, one-line errors, and `python main.py task=dolly solver=zeroshot` offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.base import Example
from tasks.dolly import Dolly
from tests.conftest import ROOT, run_main
from zoexp.errors import ConfigError

FIXTURE = ROOT / "tests" / "fixtures" / "dolly"
ROWS = [json.loads(line) for line in (FIXTURE / "train.jsonl").read_text().splitlines()]


def test_template_with_and_without_context():
    task = Dolly()
    with_input = task.render({"instruction": "Name the river.", "context": " Oslo has the Akerselva. ",
                              "response": "The Akerselva.", "category": "closed_qa"})
    assert with_input.prompt == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nName the river.\n\n"
        "### Input:\nOslo has the Akerselva.\n\n### Response:\n")
    assert with_input.candidates == ("The Akerselva.",) and with_input.label == 0
    assert with_input.answers == ("The Akerselva.",) and with_input.meta["category"] == "closed_qa"
    bare = task.render({"instruction": "Say hi.", "context": "", "response": "Hi!", "category": "open_qa"})
    assert bare.prompt == ("Below is an instruction that describes a task. Write a response that appropriately "
                           "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    with pytest.raises(ConfigError, match="empty instruction or response"):
        task.render({"instruction": "Say hi.", "context": "", "response": "  ", "category": "open_qa"})


def test_score_is_rouge_l_f_measure_cut_at_the_next_section():
    """ROUGE-L by hand: LCS("the cat sat", "the cat sat on the mat") = 3 words, P = 1, R = 1/2, F = 2/3;
    "a dog" shares nothing with "the cat". Generation is cut at '###'."""
    examples = [Example("p", ("the cat sat on the mat",), 0, answers=("the cat sat on the mat",)),
                Example("p", ("the cat",), 0, answers=("the cat",))]
    scores = Dolly().score(["the cat sat\n### Instruction:\nthe cat sat on the mat", "a dog"], examples)
    assert scores["rougeL"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert scores["f1"] == pytest.approx((2 / 3 + 0.0) / 2)  # token F1: "cat sat" in "cat sat on mat"
    stemmed = Dolly().score(["cats sitting"], [Example("p", ("cat sits",), 0, answers=("cat sits",))])
    assert stemmed["rougeL"] == pytest.approx(1.0)  # Porter stemming: cats -> cat, sitting / sits -> sit
    with pytest.raises(TypeError):
        Dolly().score([0], examples[:1])


def test_splits_are_disjoint_seeded_slices_of_the_one_file():
    task = Dolly(data_dir=str(FIXTURE), num_train=10, num_dev=5, num_eval=100, seed=3)
    data = task.sample()
    assert [len(data[s]) for s in ("train", "dev", "test")] == [10, 5, len(ROWS) - 15]  # test: what is left
    prompts = [{ex.prompt + ex.candidates[0] for ex in data[s]} for s in ("train", "dev", "test")]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    assert set().union(*prompts) == {Dolly().render(r).prompt + r["response"] for r in ROWS}
    assert task.sample() == data                                                   # seeded
    assert Dolly(data_dir=str(FIXTURE), num_train=10, num_dev=5, seed=4).sample()["train"] != data["train"]
    assert len(Dolly(data_dir=str(FIXTURE), num_train=10, num_dev=5, num_eval=3).sample()["test"]) == 3


def test_hub_file_name_is_accepted_locally(tmp_path):
    (tmp_path / "databricks-dolly-15k.jsonl").write_text((FIXTURE / "train.jsonl").read_text())
    data = Dolly(data_dir=str(tmp_path), num_train=4, num_dev=2, num_eval=2).sample()
    assert [len(data[s]) for s in ("train", "dev", "test")] == [4, 2, 2]


def test_hub_loading_asks_datasets_for_the_train_split(monkeypatch):
    import datasets

    calls = []

    def load_dataset(*args, split=None, **kwargs):
        calls.append((args, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = Dolly(num_train=6, num_dev=3, num_eval=4).sample()
    assert calls == [(("databricks/databricks-dolly-15k",), "train")]  # one split, read once
    assert [len(data[s]) for s in ("train", "dev", "test")] == [6, 3, 4]


def test_bad_data_is_a_one_line_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "category"}) + "\n"
                                                  for r in ROWS))
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['category'\]"):
        Dolly(data_dir=str(tmp_path), num_train=4, num_dev=2).sample()
    with pytest.raises(ConfigError, match="task.num_train"):
        Dolly(data_dir=str(FIXTURE), num_train=20, num_dev=4).sample()
    with pytest.raises(ConfigError, match="task.max_new_tokens"):
        Dolly(max_new_tokens=0)
    with pytest.raises(ConfigError, match="task.k_shot"):
        Dolly(k_shot=2)


def test_zeroshot_cli_prints_rouge_l(tmp_path: Path):
    """The must-show command, offline, on the fixture (a tiny generation budget)."""
    run_dir = tmp_path / "run"
    proc = run_main("task=dolly", "solver=zeroshot", f"task.data_dir={FIXTURE}", "task.num_train=8",
                    "task.num_dev=2", "task.num_eval=2", "task.max_new_tokens=6", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dev rougeL:" in proc.stdout and "test rougeL:" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metric"] == "rougeL" and 0.0 <= summary["test_rougeL"] <= 1.0 and "test_f1" in summary
