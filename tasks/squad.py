"""SQuAD v1.1: extractive question answering, solved generatively (hub: squad)

Generation, as in the MeZO paper (OPT experiments). The model continues the prompt; the
gold continuation for the teacher-forced `lm` objective is the first answer and a newline,
and a generated answer ends at its first newline. Metric: SQuAD F1 (and exact match) against
every gold answer:

    Title: {title}\\nContext: {context}\\nQuestion: {question}\\nAnswer:{ answer}\\n
"""

from typing import ClassVar, Sequence

from tasks.base import Example, Task
from zoexp.errors import ConfigError
from zoexp.metrics import qa_scores

STOP = "\n"


def gold_answers(task: Task, row: dict, column: str, key: str) -> tuple[str, ...]:
    """The distinct non-empty answer strings of row[column][key], or a ConfigError naming the column."""
    value = row[column]
    texts = value.get(key) if isinstance(value, dict) else None
    answers = tuple(dict.fromkeys(t.strip() for t in texts or () if t and t.strip()))
    if not answers:
        raise ConfigError(f"task ({task.name} column '{column}')",
                          f"got {value!r}; allowed: a mapping whose {key!r} lists at least one answer")
    return answers


def generation_scores(predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
    """F1 / exact match of generated strings, each cut at the first newline."""
    if any(not isinstance(p, str) for p in predictions):
        raise TypeError("a generation task scores generated strings, not candidate indices")
    return qa_scores([p.split(STOP, 1)[0].strip() for p in predictions], [ex.answers for ex in examples])


class GenerationTask(Task):
    """Free-text answers: the gold answer (plus the stop string) is the one candidate, the
    metric is F1 / exact match of the generated string. Greedy generation runs for at most
    `max_new_tokens` (task.max_new_tokens) and is cut at the first `stop` string ("" keeps it
    all: the model's end-of-sequence token or the token limit ends it)."""

    kind = "generation"
    metric = "f1"
    label_column = None
    stop: ClassVar[str] = STOP

    def __init__(self, max_new_tokens: int = 32, **kwargs) -> None:
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ConfigError("task.max_new_tokens", f"got {max_new_tokens!r}; allowed: an integer >= 1")
        super().__init__(**kwargs)
        self.max_new_tokens = max_new_tokens

    def score(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        return generation_scores(predictions, examples)


class SQuAD(GenerationTask):
    name = "squad"
    hub_path = ("squad",)
    required_columns = ("title", "context", "question", "answers")

    def render(self, row: dict) -> Example:
        answers = gold_answers(self, row, "answers", "text")
        prompt = f"Title: {row['title']}\nContext: {row['context']}\nQuestion: {row['question'].strip()}\nAnswer:"
        return Example(prompt=prompt, candidates=(f" {answers[0]}{STOP}",), label=0, answers=answers)
