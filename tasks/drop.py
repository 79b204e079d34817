"""DROP: discrete reasoning over paragraphs, answered generatively (hub: drop)

Generation, as in the MeZO paper (OPT experiments); the gold strings are the answer spans
(`answers_spans["spans"]`). Gold continuation, stop rule and metric as for SQuAD (SQuAD-style
F1, which is what the MeZO paper reports for DROP):

    Passage: {passage}\\nQuestion: {question}\\nAnswer:{ answer}\\n
"""

from tasks.base import Example
from tasks.squad import STOP, GenerationTask, gold_answers


class DROP(GenerationTask):
    name = "drop"
    hub_path = ("drop",)
    required_columns = ("passage", "question", "answers_spans")

    def render(self, row: dict) -> Example:
        answers = gold_answers(self, row, "answers_spans", "spans")
        prompt = f"Passage: {row['passage']}\nQuestion: {row['question'].strip()}\nAnswer:"
        return Example(prompt=prompt, candidates=(f" {answers[0]}{STOP}",), label=0, answers=answers)
