"""SuperGLUE ReCoRD: fill the @placeholder of a cloze query with an entity (hub: super_glue/record)

Multiple choice, as in the MeZO paper (OPT experiments, the GPT-3-style template): highlights
become "- " bullets, and each entity of the passage yields one candidate, the query with the
entity in the placeholder, scored by the LM log-likelihood of that span:

    {passage with "@highlight\\n" -> "- "}\\n- {query.replace("@placeholder", entity)}

An example can have several correct entities (`answers`); a prediction is correct if it picks
any of them (accuracy).
"""

from typing import Sequence

from tasks.base import Example, Task
from zoexp.errors import ConfigError


class ReCoRD(Task):
    name = "record"
    kind = "multiple_choice"
    hub_path = ("super_glue", "record")
    required_columns = ("passage", "query", "entities", "answers")
    label_column = None

    def render(self, row: dict) -> Example:
        entities = tuple(dict.fromkeys(row["entities"]))  # the hub lists repeated mentions
        answers = set(row["answers"])
        gold = tuple(i for i, e in enumerate(entities) if e in answers)
        if not gold:
            raise ConfigError(f"task ({self.name} column 'answers')",
                              f"answers {list(row['answers'])[:3]} name none of the entities "
                              f"{list(entities)[:5]}; allowed: a non-empty subset of 'entities'")
        passage = row["passage"].replace("@highlight\n", "- ")
        candidates = tuple(" " + row["query"].replace("@placeholder", e) for e in entities)
        return Example(prompt=f"{passage}\n-", candidates=candidates, label=gold[0], meta={"gold": gold})

    def score(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        correct = sum(int(p in ex.meta["gold"]) for p, ex in zip(predictions, examples))
        return {"accuracy": correct / max(len(examples), 1)}
