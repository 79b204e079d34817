"""In-context learning baseline: k demonstrations from the training examples in each prompt.

No training step: each evaluation prompt is prefixed with k demonstrations (prompt + gold
candidate), joined by `separator`. The demonstrations of eval example i are a fixed draw
from the training examples seeded by (seed, i), so the same run always shows the same ones.
The model's max_length cuts a long context from its start, so the query is never lost.
"""

from __future__ import annotations

import random

from tasks.base import Example
from zoexp.errors import ConfigError
from zoexp.solvers.base import Solver, check, derive_seed


class ICL(Solver):
    trains = False

    def __init__(self, k: int = 4, separator: str = "\n\n", **kwargs) -> None:
        kwargs.setdefault("steps", 0)
        super().__init__(**kwargs)
        check("solver.steps", self.steps == 0, self.steps, "0 (icl does not train)")
        check("solver.k", isinstance(k, int) and not isinstance(k, bool) and k >= 0, k, "an integer >= 0")
        check("solver.separator", isinstance(separator, str), separator, "a string")
        self.k, self.separator = k, separator

    def setup(self, params, objective, train_examples=()) -> None:
        super().setup(params, objective, train_examples)
        if self.k > len(self.train_examples):
            raise ConfigError("solver.k", f"got {self.k}; allowed: at most task.num_train="
                              f"{len(self.train_examples)} demonstrations")

    def demonstration(self, ex: Example) -> str:
        """The example's prompt completed by its gold answer."""
        gold = ex.candidates[ex.label] if ex.candidates and ex.label is not None else ex.answers[0]
        return ex.prompt + gold

    def eval_examples(self, examples: list) -> list:
        out = []
        for i, ex in enumerate(examples):
            demos = random.Random(derive_seed(self.seed, i)).sample(self.train_examples, self.k)
            context = "".join(self.demonstration(d) + self.separator for d in demos)
            out.append(Example(prompt=context + ex.prompt, candidates=ex.candidates, label=ex.label,
                               answers=ex.answers, meta=ex.meta))
        return out
