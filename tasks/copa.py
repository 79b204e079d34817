"""SuperGLUE COPA: pick the more plausible cause or effect (hub: super_glue/copa)

Multiple choice, as in the MeZO paper (OPT experiments): the premise loses its final period,
the question picks the connective, and each choice is scored by the LM log-likelihood of its
span with its first word lower-cased (unless it is "I"):

    {premise without "."} so {choice}        (question = effect)
    {premise without "."} because {choice}   (question = cause)
"""

from tasks.base import Example, Task
from zoexp.errors import ConfigError

CONNECTIVES = {"cause": " because", "effect": " so"}


def lower_first_word(text: str) -> str:
    """ "The sun rose." -> "the sun rose."; "I left." stays (the MeZO capitalisation rule)."""
    first, sep, rest = text.partition(" ")
    return (first if first == "I" else first.lower()) + sep + rest


class COPA(Task):
    name = "copa"
    kind = "multiple_choice"
    hub_path = ("super_glue", "copa")
    required_columns = ("premise", "choice1", "choice2", "question", "label")
    num_labels = 2

    def render(self, row: dict) -> Example:
        if row["question"] not in CONNECTIVES:
            raise ConfigError(f"task ({self.name} column 'question')",
                              f"unknown value {row['question']!r}; allowed: {sorted(CONNECTIVES)}")
        premise = row["premise"].rstrip()
        premise = premise[:-1] if premise.endswith(".") else premise
        choices = tuple(" " + lower_first_word(row[c].strip()) for c in ("choice1", "choice2"))
        return Example(prompt=premise + CONNECTIVES[row["question"]], candidates=choices, label=int(row["label"]))
