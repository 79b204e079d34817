"""SuperGLUE BoolQ: yes/no question about a passage (hub: super_glue/boolq)

MeZO template (OPT experiments), label words No (False, 0) / Yes (True, 1). The question gets
a capital first letter and a trailing "?" when it lacks one:

    {passage} {Question}?\\n{No|Yes}
"""

from tasks.base import Example, Task


class BoolQ(Task):
    name = "boolq"
    hub_path = ("super_glue", "boolq")
    required_columns = ("passage", "question", "label")
    num_labels = 2
    verbalizer = ("No", "Yes")

    def render(self, row: dict) -> Example:
        question = row["question"].strip()
        question = question[:1].upper() + question[1:] + ("" if question.endswith("?") else "?")
        return Example(prompt=f"{row['passage']} {question}\n", candidates=self.verbalizer,
                       label=int(row["label"]))
