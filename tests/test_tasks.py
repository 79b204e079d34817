"""Tasks: exact MeZO templates, offline loaders on the fixtures, one-line errors, tokenisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tasks.base import Example
from tasks.boolq import BoolQ
from tasks.cb import CB
from tasks.copa import COPA
from tasks.drop import DROP
from tasks.multirc import MultiRC
from tasks.record import ReCoRD
from tasks.rte import RTE
from tasks.squad import SQuAD
from tasks.wic import WiC
from tasks.wsc import WSC
from zoexp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TASKS = {"rte": RTE, "cb": CB, "boolq": BoolQ, "copa": COPA, "wic": WiC, "wsc": WSC, "multirc": MultiRC,
         "record": ReCoRD, "squad": SQuAD, "drop": DROP}
CLASSIFICATION = ("rte", "cb", "boolq", "wic", "wsc", "multirc")


def full_text(example: Example, candidate: int) -> str:
    return example.prompt + example.candidates[candidate]


# ---- templates: the exact strings of the MeZO paper's appendix -------------------------------
TEMPLATE_CASES = [
    (RTE, {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0},
     'A dog runs.\nDoes this mean that "An animal moves." is true? Yes or No?\nYes'),
    (CB, {"premise": "It may rain.", "hypothesis": "It rains", "label": 2},
     'Suppose It may rain. Can we infer that "It rains"? Yes, No, or Maybe?\nMaybe'),
    (BoolQ, {"passage": "Ice floats.", "question": "does ice float", "label": 1},
     "Ice floats. Does ice float?\nYes"),
    (BoolQ, {"passage": "Ice floats.", "question": "Does ice sink?", "label": 0},
     "Ice floats. Does ice sink?\nNo"),
    (WiC, {"word": "bank", "sentence1": "A river bank.", "sentence2": "A savings bank.", "label": 0},
     'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nA river bank.\nA savings bank.\nNo'),
    (WSC, {"text": "Mark told Pete he won.", "span1_text": "Pete", "span2_text": "He", "label": 1},
     'Mark told Pete he won.\nIn the previous sentence, does the pronoun "he" refer to Pete? Yes or No?\nYes'),
    (MultiRC, {"paragraph": "Sam ate.", "question": "Who ate?", "answer": "Sam", "label": 1},
     'Sam ate.\nQuestion: Who ate?\nI found this answer "Sam". Is that correct? Yes or No?\nYes'),
]


@pytest.mark.parametrize("cls, row, expected", TEMPLATE_CASES)
def test_classification_template_renders_the_paper_string(cls, row, expected):
    ex = cls().render(row)
    assert full_text(ex, ex.label) == expected
    assert ex.candidates == cls.verbalizer


def test_copa_template_connective_and_capitalisation():
    task = COPA()
    effect = task.render({"premise": "The glass fell.", "choice1": "It broke.", "choice2": "I caught it.",
                          "question": "effect", "label": 0})
    assert effect.prompt == "The glass fell so"
    assert [full_text(effect, i) for i in (0, 1)] == ["The glass fell so it broke.", "The glass fell so I caught it."]
    cause = task.render({"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
                         "choice2": "The grass was cut.", "question": "cause", "label": 0})
    assert full_text(cause, 0) == "My body cast a shadow over the grass because the sun was rising."


def test_record_template_fills_the_placeholder_per_entity():
    row = {"passage": "Ann beat Bo in Oslo.\n@highlight\nAnn wins", "query": "@placeholder won the race.",
           "entities": ["Ann", "Bo", "Oslo", "Ann"], "answers": ["Ann"]}
    ex = ReCoRD().render(row)
    assert ex.prompt == "Ann beat Bo in Oslo.\n- Ann wins\n-"
    assert ex.candidates == (" Ann won the race.", " Bo won the race.", " Oslo won the race.")
    assert full_text(ex, ex.label) == "Ann beat Bo in Oslo.\n- Ann wins\n- Ann won the race."


def test_generation_templates_and_gold_continuations():
    squad = SQuAD().render({"title": "Oslo", "context": "Oslo is in Norway.", "question": " Where is Oslo? ",
                            "answers": {"text": ["Norway", "in Norway", "Norway"], "answer_start": [10, 7, 10]}})
    assert squad.prompt == "Title: Oslo\nContext: Oslo is in Norway.\nQuestion: Where is Oslo?\nAnswer:"
    assert squad.candidates == (" Norway\n",) and squad.label == 0
    assert squad.answers == ("Norway", "in Norway")
    drop = DROP().render({"passage": "3 then 4 points.", "question": "Total?",
                          "answers_spans": {"spans": ["7"], "types": ["number"]}})
    assert full_text(drop, 0) == "Passage: 3 then 4 points.\nQuestion: Total?\nAnswer: 7\n"
    assert drop.answers == ("7",)


# ---- scoring -----------------------------------------------------------------------------------
def test_generation_score_cuts_at_newline_and_reports_f1_and_em():
    task = SQuAD()
    examples = [Example("q", (" Norway\n",), 0, answers=("Norway", "in Norway")),
                Example("q", (" light blue sky\n",), 0, answers=("light blue sky",))]
    scores = task.score(["in Norway\nQuestion: next", " blue"], examples)
    assert scores == pytest.approx({"f1": (1.0 + 0.5) / 2, "exact_match": 0.5})
    with pytest.raises(TypeError):
        task.score([0, 0], examples)


def test_record_counts_any_gold_entity_as_correct():
    examples = [Example("p", ("a", "b", "c"), 0, meta={"gold": (0, 2)}),
                Example("p", ("a", "b"), 1, meta={"gold": (1,)})]
    assert ReCoRD().score([2, 0], examples) == {"accuracy": 0.5}


# ---- loading through data_dir and the YAML configs -------------------------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_yaml_builds_the_task_and_loader_samples_requested_sizes(name):
    node = OmegaConf.load(ROOT / "conf" / "task" / f"{name}.yaml")
    cfg = OmegaConf.create({"hardware": {"seed": 3}, "data_root": None, "task": node})
    cfg.task.data_dir, cfg.task.num_train, cfg.task.num_dev, cfg.task.num_eval = str(FIXTURES / name), 12, 6, 1000
    task = instantiate(cfg.task)
    assert isinstance(task, TASKS[name]) and task.seed == 3
    data = task.sample()
    n_validation = sum(1 for _ in open(FIXTURES / name / "validation.jsonl"))
    assert [len(data[s]) for s in ("train", "dev", "test")] == [12, 6, n_validation]
    for ex in data["train"] + data["test"]:
        assert 0 <= ex.label < len(ex.candidates)
        assert ex.answers if task.kind == "generation" else not ex.answers
    assert task.sample() == data  # seeded: the same examples every time


def test_data_root_finds_the_task_folder():
    task = CB(data_root=str(FIXTURES), num_train=5, num_dev=5, num_eval=3)
    assert task.data_dir == str(FIXTURES / "cb")
    assert [len(v) for v in task.sample().values()] == [5, 5, 3]


def test_k_shot_draws_k_per_class_for_train_and_dev():
    task = RTE(data_dir=str(FIXTURES / "rte"), k_shot=4, seed=0)
    data = task.sample()
    for split in ("train", "dev"):
        assert sorted(ex.label for ex in data[split]) == [0] * 4 + [1] * 4
    assert not set(ex.prompt for ex in data["train"]) & set(ex.prompt for ex in data["dev"])


# ---- bad data: one line naming the column ----------------------------------------------------
def _write_split(folder: Path, rows: list[dict]) -> str:
    for split in ("train", "validation"):
        with open(folder / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(folder)


def _fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in open(FIXTURES / name / "train.jsonl")]


def _assert_one_line_naming(err: ConfigError, column: str) -> None:
    text = str(err)
    assert "\n" not in text and f"'{column}'" in text, text


@pytest.mark.parametrize("name, column", [("rte", "hypothesis"), ("copa", "choice2"), ("record", "entities"),
                                          ("squad", "answers"), ("drop", "answers_spans"), ("wsc", "span2_text")])
def test_missing_column_fails_naming_it(tmp_path, name, column):
    rows = [{k: v for k, v in r.items() if k != column} for r in _fixture_rows(name)]
    with pytest.raises(ConfigError) as err:
        TASKS[name](data_dir=_write_split(tmp_path, rows), num_train=4, num_dev=2).sample()
    _assert_one_line_naming(err.value, column)


@pytest.mark.parametrize("name, column, bad", [
    ("rte", "label", {"label": 2}),
    ("cb", "label", {"label": 3}),
    ("copa", "question", {"question": "reason"}),
    ("record", "answers", {"answers": ["Nobody"]}),
    ("squad", "answers", {"answers": {"text": [], "answer_start": []}}),
    ("drop", "answers_spans", {"answers_spans": {"spans": [""], "types": ["span"]}}),
])
def test_unknown_label_or_answer_fails_naming_the_column(tmp_path, name, column, bad):
    rows = _fixture_rows(name)
    rows[5] = rows[5] | bad
    with pytest.raises(ConfigError) as err:
        TASKS[name](data_dir=_write_split(tmp_path, rows), num_train=len(rows) - 1, num_dev=1).sample()
    _assert_one_line_naming(err.value, column)


# ---- tokenisation with the default model's byte-level BPE (GPT-2 style) ---------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from zoexp.model import resolve_model_source

    name = OmegaConf.load(ROOT / "conf" / "model" / "smollm2-135m.yaml").name
    return AutoTokenizer.from_pretrained(resolve_model_source(name))


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_label_words_are_single_tokens_after_the_prompt(tokenizer, name):
    task = TASKS[name](data_dir=str(FIXTURES / name), num_train=4, num_dev=0, num_eval=1)
    ex = task.sample()["test"][0]
    prompt_ids = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    for word in ex.candidates:
        word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(word_ids) == 1, (word, word_ids)
        # Scoring prompt and word separately is the same as tokenising the full text.
        assert tokenizer(ex.prompt + word, add_special_tokens=False)["input_ids"] == prompt_ids + word_ids


@pytest.mark.parametrize("name", ["copa", "record", "squad", "drop"])
def test_multi_token_candidates_split_cleanly_at_the_prompt_boundary(tokenizer, name):
    task = TASKS[name](data_dir=str(FIXTURES / name), num_train=4, num_dev=0, num_eval=4)
    for ex in task.sample()["test"]:
        prompt_ids = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        for cand in ex.candidates:
            cand_ids = tokenizer(cand, add_special_tokens=False)["input_ids"]
            assert len(cand_ids) > 1
            assert tokenizer(ex.prompt + cand, add_special_tokens=False)["input_ids"] == prompt_ids + cand_ids


# ---- multiple choice: the candidate the LM finds likelier wins --------------------------------
class BigramLM:
    """A toy causal LM that strongly expects each token of one memorised text to follow its
    predecessor: any candidate other than the memorised one gets lower log-likelihood."""

    def __init__(self, token_ids: list[int], vocab_size: int) -> None:
        self.next = dict(zip(token_ids, token_ids[1:]))
        self.vocab_size = vocab_size

    def __call__(self, input_ids, attention_mask, **_):  # full logits; position ids are irrelevant
        import torch
        from types import SimpleNamespace

        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for b, t in torch.nonzero(attention_mask).tolist():
            following = self.next.get(int(input_ids[b, t]))
            if following is not None:
                logits[b, t, following] = 8.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("gold", [0, 1])
def test_multiple_choice_scoring_picks_the_likelier_candidate(tokenizer, gold):
    import torch

    from zoexp.objectives import CandidateScorer

    copa = COPA().render({"premise": "The glass fell.", "choice1": "It broke into pieces.",
                          "choice2": "The cat was asleep.", "question": "effect", "label": gold})
    record = ReCoRD().render({"passage": "Ann beat Bo.\n@highlight\nAnn wins", "query": "@placeholder won.",
                              "entities": ["Bo", "Ann"], "answers": [["Bo", "Ann"][gold]]})
    for ex in (copa, record):
        model = BigramLM(tokenizer(full_text(ex, gold))["input_ids"], len(tokenizer))
        scorer = CandidateScorer(model, tokenizer, torch.device("cpu"))
        assert scorer.score([ex]).argmax(-1).tolist() == [gold]
