"""databricks-dolly-15k: instruction following, answered generatively, scored with ROUGE-L.

Rows have `instruction`, `context` (often empty), `response` and `category` (open_qa,
closed_qa, summarization, brainstorming, ...). The prompt is the Alpaca / Dolly instruction
template (the no-input form when the context is empty):

    Below is an instruction that describes a task, paired with an input that provides further
    context. Write a response that appropriately completes the request.\\n\\n
    ### Instruction:\\n{instruction}\\n\\n### Input:\\n{context}\\n\\n### Response:\\n{response}

The gold continuation is the response (what the `lm` objective, the default for generation
tasks, teaches); at evaluation the model generates greedily for at most `task.max_new_tokens`
tokens (default 128, as in the SubZero README's DOLLY run), the text is cut at the first `###`
(the template's next section, which a model that does not stop tends to start) and scored with
ROUGE-L F-measure (the maintained `rouge-score` package, Porter stemming) against the response;
token F1 (SQuAD-normalised) is reported too, so `objective=f1` applies.

Splits. The hub's `databricks/databricks-dolly-15k` has a train split only (15,011 rows), so
train, dev and test are all drawn from it, disjointly: one seeded permutation of the rows gives
the first `num_train` to train, the next `num_dev` to dev and the next `num_eval` (or what is
left) to test (sorted, as the other tasks' test sets are). A local copy
(`task.data_dir=<folder>` or `<data_root>/dolly/`) is that one file, as `train.jsonl` (or
.json / .csv / .parquet) or under the hub's own name `databricks-dolly-15k.jsonl`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from tasks.base import Example
from tasks.squad import GenerationTask
from zoexp.errors import ConfigError
from zoexp.metrics import qa_scores

HUB_FILE = "databricks-dolly-15k.jsonl"
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
              "context. Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n")
WITHOUT_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, with stemming), a fraction in [0, 1]."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return sum(scores) / max(len(scores), 1)


class Dolly(GenerationTask):
    name = "dolly"
    hub_path = ("databricks/databricks-dolly-15k",)
    required_columns = ("instruction", "context", "response", "category")
    metric = "rougeL"
    stop = "###"

    def __init__(self, max_new_tokens: int = 128, **kwargs) -> None:
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)

    def render(self, row: dict) -> Example:
        instruction = (row["instruction"] or "").strip()
        context = (row["context"] or "").strip()
        response = (row["response"] or "").strip()
        if not instruction or not response:
            raise ConfigError("task (dolly columns 'instruction', 'response')",
                              f"got an empty instruction or response in {row!r:.120}; allowed: non-empty text")
        template = WITH_INPUT if context else WITHOUT_INPUT
        prompt = template.format(instruction=instruction, context=context)
        return Example(prompt=prompt, candidates=(response,), label=0, answers=(response,),
                       meta={"category": row["category"]})

    def score(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        if any(not isinstance(p, str) for p in predictions):
            raise TypeError("a generation task scores generated strings, not candidate indices")
        texts = [p.split(self.stop, 1)[0].strip() if self.stop else p.strip() for p in predictions]
        return {"rougeL": rouge_l(texts, [ex.answers[0] for ex in examples]),
                "f1": qa_scores(texts, [ex.answers for ex in examples])["f1"]}

    def _local_file(self, split: str) -> Path:
        try:
            return super()._local_file(split)
        except ConfigError:
            if (Path(self.data_dir) / HUB_FILE).is_file():
                return Path(self.data_dir) / HUB_FILE
            raise

    def sample(self) -> dict[str, list[Example]]:
        """train / dev / test: disjoint slices of one seeded permutation of the one split."""
        rows = self.load_rows(self.train_split)
        need = self.num_train + self.num_dev
        if need >= len(rows):
            raise ConfigError("task.num_train", f"num_train + num_dev = {need} leaves no test rows of the "
                              f"{len(rows)} dolly rows; allowed: at most {len(rows) - 1} together")
        order = random.Random(self.seed).sample(range(len(rows)), len(rows))
        test = sorted(order[need:need + self.num_eval])
        parts = {"train": order[:self.num_train], "dev": order[self.num_train:need], "test": test}
        return {name: [self.render(rows[i]) for i in idx] for name, idx in parts.items()}
