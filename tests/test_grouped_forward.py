"""Grouped forwards: `groups` copies of a batch in one forward, one loss per row group.

Probe strategies that evaluate several perturbations in one pass (batched probes, layer-major
offload) ask the objective for `group_losses(batch, groups)`; whatever makes the groups differ
is theirs to arrange. Here: with nothing arranged every group's loss is the batch's loss (to
float tolerance: one matmul over more rows may sum in another order), one group is exactly
`loss`, and rows are group-major (a hook that changes group 1 alone changes loss 1 alone).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tasks.copa import COPA
from tasks.rte import RTE
from tasks.squad import SQuAD
from tests.conftest import ROOT
from zoexp.objectives import CandidateScorer, build_objective

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def scorer() -> CandidateScorer:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from zoexp.model import resolve_model_source

    name = OmegaConf.load(ROOT / "conf" / "model" / "smollm2-135m.yaml").name
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(name))
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    return CandidateScorer(model, tokenizer, torch.device("cpu"), max_length=128)


def examples(task: str, objective: str, scorer: CandidateScorer, n: int = 4):
    data = {"copa": COPA, "rte": RTE, "squad": SQuAD}[task](
        data_dir=str(FIXTURES / task), num_train=n, num_dev=0, num_eval=1)
    return build_objective(objective, scorer, data), data


@pytest.mark.parametrize("task,objective", [("copa", "classification"), ("rte", "classification"),
                                            ("squad", "lm"), ("copa", "accuracy")])
def test_every_group_sees_the_batch_loss(scorer, task, objective):
    obj, data = examples(task, objective, scorer)
    batch = data.sample()["train"]
    single = obj.loss(batch)
    assert obj.group_losses(batch, 1) == [single]
    grouped = obj.group_losses(batch, 3)
    assert grouped == pytest.approx([single] * 3, rel=1e-5, abs=1e-6)


def test_groups_are_row_blocks_in_group_major_order(scorer):
    """Zeroing the logits of rows [n, 2n) (group 1) makes every candidate equally likely there:
    group 1's cross-entropy becomes log(#candidates); groups 0 and 2 keep the batch loss."""
    obj, data = examples("rte", "classification", scorer)
    batch = data.sample()["train"]
    n, single = len(batch), obj.loss(batch)

    def flatten_group_1(module, args, output):
        output = output.clone()
        output[n:2 * n] = 0.0
        return output

    handle = scorer.model.lm_head.register_forward_hook(flatten_group_1)
    try:
        grouped = obj.group_losses(batch, 3)
    finally:
        handle.remove()
    n_candidates = len(batch[0].candidates)
    assert grouped[1] == pytest.approx(torch.log(torch.tensor(float(n_candidates))).item(), rel=1e-5)
    assert [grouped[0], grouped[2]] == pytest.approx([single, single], rel=1e-5, abs=1e-6)


def test_a_grouped_forward_counts_one_pass_per_group(scorer):
    obj, data = examples("rte", "classification", scorer)
    batch = data.sample()["train"]
    before = scorer.forward_passes, scorer.real_tokens
    obj.group_losses(batch, 5)
    assert scorer.forward_passes - before[0] == 5
    one = scorer.real_tokens - before[1]
    obj.loss(batch)
    assert (scorer.real_tokens - before[1] - one) * 5 == one
